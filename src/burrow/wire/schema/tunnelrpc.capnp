# burrow's Cap'n Proto schema for the tunnel control stream.
#
# Wire-compatible with cloudflared's tunnelrpc schema: the file id, type ids, field names and
# ordinals below are the wire format and must not change. Only the registration parts that
# burrow speaks are declared here.
@0xdb8274f9144abc7e;

struct ClientInfo @0x83ced0145b2f114b {
  clientId @0 :Data;          # 16-byte connector id
  features @1 :List(Text);    # e.g. "serialized_headers", "allow_remote_config"
  version @2 :Text;
  arch @3 :Text;              # e.g. "linux_amd64"
}

struct ConnectionOptions @0xb4bf9861fe035d04 {
  client @0 :ClientInfo;
  originLocalIp @1 :Data;
  replaceExisting @2 :Bool;
  compressionQuality @3 :UInt8;
  numPreviousAttempts @4 :UInt8;
}

struct ConnectionResponse @0xdbaa9d03d52b62dc {
  result :union {
    error @0 :ConnectionError;
    connectionDetails @1 :ConnectionDetails;
  }
}

struct ConnectionError @0xf5f383d2785edb86 {
  cause @0 :Text;
  retryAfter @1 :Int64;       # nanoseconds
  shouldRetry @2 :Bool;
}

struct ConnectionDetails @0xb5f39f082b9ac18a {
  uuid @0 :Data;              # 16-byte connection id
  locationName @1 :Text;
  tunnelIsRemotelyManaged @2 :Bool;
}

struct TunnelAuth @0x9496331ab9cd463f {
  accountTag @0 :Text;
  tunnelSecret @1 :Data;
}

interface RegistrationServer @0xf71695ec7fe85497 {
  registerConnection @0 (auth :TunnelAuth, tunnelId :Data, connIndex :UInt8,
                         options :ConnectionOptions) -> (result :ConnectionResponse);
  unregisterConnection @1 () -> ();
  updateLocalConfiguration @2 (config :Data) -> ();
}
