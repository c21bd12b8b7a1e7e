// A real OAuth 2.0 authorization server (panva/oidc-provider) for run.sh:
// the client credentials grant with private_key_jwt (ES256, RS256, PS256,
// EdDSA clients, each knowing only its public key) and RFC 8705
// tls_client_auth (the client certificate's subject DN). HTTPS on
// 127.0.0.1 on a free port, printed as the first line of stdout.
//
// Reads from $DIR: server.pem/server.key (its certificate), ca.pem (trusted
// for client certificates), ec.pem, rsa.pem, ed.pem (the clients' private
// keys, of which only the public halves are registered).
import { readFileSync } from 'node:fs';
import { createPublicKey } from 'node:crypto';
import https from 'node:https';
import Provider from 'oidc-provider';

const dir = process.env.DIR;
const read = (file) => readFileSync(`${dir}/${file}`);
const publicJwk = (file) => ({ ...createPublicKey(read(file)).export({ format: 'jwk' }), kid: 'k1' });
const machine = { grant_types: ['client_credentials'], redirect_uris: [], response_types: [] };
const jwtClient = (id, file, alg) => ({
  ...machine,
  client_id: id,
  token_endpoint_auth_method: 'private_key_jwt',
  token_endpoint_auth_signing_alg: alg,
  jwks: { keys: [publicJwk(file)] },
});

const server = https.createServer({
  key: read('server.key'),
  cert: read('server.pem'),
  ca: read('ca.pem'),
  requestCert: true, // asked for, verified below only for tls_client_auth
  rejectUnauthorized: false,
});

server.listen(0, '127.0.0.1', () => {
  const { port } = server.address();
  const provider = new Provider(`https://127.0.0.1:${port}`, {
    clients: [
      jwtClient('jwt-es256', 'ec.pem', 'ES256'),
      jwtClient('jwt-rs256', 'rsa.pem', 'RS256'),
      jwtClient('jwt-ps256', 'rsa.pem', 'PS256'),
      jwtClient('jwt-eddsa', 'ed.pem', 'EdDSA'),
      {
        ...machine,
        client_id: 'mtls',
        token_endpoint_auth_method: 'tls_client_auth',
        tls_client_auth_subject_dn: 'CN=sidekey-client',
      },
    ],
    clientAuthMethods: ['private_key_jwt', 'tls_client_auth'],
    features: {
      clientCredentials: { enabled: true },
      devInteractions: { enabled: false },
      mTLS: {
        enabled: true,
        tlsClientAuth: true,
        getCertificate: (ctx) => ctx.socket.getPeerX509Certificate?.()?.toString(),
        certificateAuthorized: (ctx) => ctx.socket.authorized,
        certificateSubjectMatches: (ctx, property, expected) => property === 'tls_client_auth_subject_dn'
          && ctx.socket.getPeerX509Certificate()?.subject === expected,
      },
    },
  });
  provider.on('grant.error', (ctx, error) => console.error(`grant error: ${error.message}: ${error.error_description ?? ''}`));
  server.on('request', provider.callback());
  console.log(port);
});
