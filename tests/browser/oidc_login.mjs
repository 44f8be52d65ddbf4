// Drives Debian's chromium (/usr/bin/chromium) with playwright-core through an Access login at
// a burrow edge: open the protected app, choose the OIDC provider on the Access login page, sign
// in at the IdP, reach the app, log out, open the app again.
//
// Usage: node oidc_login.mjs '<json>' with {app_url, login, password, user_data_dir,
// chromium?}. Prints one JSON line: what the browser saw at each step (the pytest test asserts).
import { chromium } from 'playwright-core';

const cfg = JSON.parse(process.argv[2]);
const out = { steps: [] };
const step = (name, page, extra = {}) => out.steps.push({ name, url: page.url(), ...extra });

const context = await chromium.launchPersistentContext(cfg.user_data_dir, {
  executablePath: cfg.chromium || '/usr/bin/chromium',
  headless: true,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
    // *.localhost already means loopback to Chromium; say it anyway so no resolver is asked.
    '--host-resolver-rules=MAP *.localhost 127.0.0.1',
  ],
  timeout: 30000,
});
try {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(20000);

  // 1. the protected app sends us to the Access login page on the team domain
  await page.goto(cfg.app_url + '/private?x=1');
  step('login page', page, { title: await page.title() });
  const idpLink = page.locator('a', { hasText: 'Log in with' });
  out.idp_links = await idpLink.count();

  // 2. the IdP's login form
  await idpLink.first().click();
  await page.waitForSelector('input[name="login"]');
  step('idp login form', page);
  await page.fill('input[name="login"]', cfg.login);
  await page.fill('input[name="password"]', cfg.password);
  await Promise.all([
    page.waitForURL((u) => u.pathname === '/private', { timeout: 20000 }),
    page.click('button[type="submit"]'),
  ]);

  // 3. back at the app: the origin reports what it received
  step('app', page);
  out.app = JSON.parse(await page.locator('body').innerText());
  out.cookies = (await context.cookies()).map((c) => ({
    name: c.name, domain: c.domain, httpOnly: c.httpOnly, secure: c.secure, sameSite: c.sameSite,
  }));

  // 4. log out, then the app asks for a login again
  await page.goto(cfg.app_url + '/cdn-cgi/access/logout');
  step('logout', page, { title: await page.title() });
  await page.goto(cfg.app_url + '/private?again=1');
  step('after logout', page, { title: await page.title() });
  out.after_logout_idp_links = await page.locator('a', { hasText: 'Log in with' }).count();
} catch (err) {
  out.error = String(err && err.stack ? err.stack : err);
} finally {
  await context.close();
}
process.stdout.write(JSON.stringify(out) + '\n');
