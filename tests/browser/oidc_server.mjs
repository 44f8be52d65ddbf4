// A real OpenID Connect provider (npm's oidc-provider) on loopback for burrow's Access tests.
//
// One confidential client, PKCE (S256) required, the library's development login form (any
// password; only the fixed users below exist), consent granted automatically for the client
// (first-party), and the user's email and groups in the id_token.
//
// Configuration by environment: OIDC_PORT (0: any free port), OIDC_CLIENT_ID,
// OIDC_CLIENT_SECRET, OIDC_REDIRECT_URI (comma-separated). When listening it prints one JSON
// line on stdout: {"issuer": "http://127.0.0.1:PORT"}.
import http from 'node:http';
import Provider from 'oidc-provider';

const USERS = {
  alice: { email: 'alice@example.com', email_verified: true, groups: ['staff', 'wiki-editors'] },
  bob: { email: 'bob@example.com', email_verified: true, groups: ['visitors'] },
};

const server = http.createServer();
await new Promise((resolve) => server.listen(Number(process.env.OIDC_PORT || 0), '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: process.env.OIDC_CLIENT_ID || 'burrow',
      client_secret: process.env.OIDC_CLIENT_SECRET || 'burrow-test-secret',
      redirect_uris: (process.env.OIDC_REDIRECT_URI || 'http://auth.localhost/cdn-cgi/access/callback').split(','),
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  pkce: { required: () => true },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['groups'],
  },
  conformIdTokenClaims: false, // put the email and groups in the id_token (code flow)
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['burrow-test-cookie-key'] },
  async findAccount(_ctx, id) {
    const user = USERS[id];
    if (!user) return undefined;
    return { accountId: id, async claims() { return { sub: id, ...user }; } };
  },
  async loadExistingGrant(ctx) {
    // First-party client: grant what it asks for without a consent screen.
    const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid email profile');
    await grant.save();
    return grant;
  },
  ttl: { Session: 600, Interaction: 600, Grant: 600, IdToken: 600, AccessToken: 600, AuthorizationCode: 60 },
});
provider.on('server_error', (_ctx, err) => console.error('oidc server_error', err));

server.on('request', provider.callback());
process.stdout.write(JSON.stringify({ issuer }) + '\n');
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
