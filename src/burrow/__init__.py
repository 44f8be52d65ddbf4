"""burrow: self-hosted tunnels speaking cloudflared's protocol."""

__version__ = "0.1.0"
