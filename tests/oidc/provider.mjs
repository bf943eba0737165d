// A real OpenID provider (oidc-provider, certified) for the tenant tests, on 127.0.0.1 only.
//
// Environment: PORT, AUDIENCE (the default resource indicator, i.e. the API's audience), KIDS (comma-separated key ids; a
// fresh EC P-256 key is made for each, the first one signs), CLIENTS (comma-separated client
// ids: each is an end user, whose client_credentials access token carries sub = client id;
// its secret is "<id>-secret"), TTL (access token lifetime in seconds).
// Prints "listening <issuer>" once it accepts connections.
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const audience = process.env.AUDIENCE;
const issuer = `http://127.0.0.1:${port}`;
const ttl = Number(process.env.TTL || 600);

const keys = (process.env.KIDS || 'k1').split(',').map((kid) => {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { ...privateKey.export({ format: 'jwk' }), kid, alg: 'ES256', use: 'sig' };
});

const clients = (process.env.CLIENTS || 'alice,bob').split(',').map((id) => ({
  client_id: id,
  client_secret: `${id}-secret`,
  grant_types: ['client_credentials'],
  id_token_signed_response_alg: 'ES256',
  redirect_uris: [],
  response_types: [],
}));

const provider = new Provider(issuer, {
  clients,
  jwks: { keys },
  cookies: { keys: ['tests-only-cookie-key'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => audience,
      useGrantedResource: () => true,
      // The token's audience is the resource asked for: a test asks for another API's to get
      // a genuinely signed token with the wrong audience.
      getResourceServerInfo: (ctx, resourceIndicator) => ({
        scope: 'api',
        audience: resourceIndicator,
        accessTokenTTL: ttl,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
