// Validate a tessera access token in Node with jose, via the auth service's JWKS.
//
//   npm ci
//   TESSERA_JWKS_URL=https://auth.example/.well-known/jwks.json \
//   TESSERA_ISSUER=https://auth.example TESSERA_AUDIENCE=tessera \
//   node verify.mjs "$ACCESS_TOKEN"
//
// Prints the token's claims and exits 0 when it is valid; prints why and exits 1 when not.
// What this checks: the signature (a key of the JWKS, fetched once and refetched on an
// unknown kid), the algorithm (pinned, never taken from the token), the token type
// (at+jwt, RFC 9068), issuer, audience and expiry. What it cannot see: a token revoked
// before it expires (logout, a password change). Tokens live minutes; a service that
// must honour revocation at once asks the auth service (POST /auth/introspect).
import { pathToFileURL } from 'node:url';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const { TESSERA_JWKS_URL, TESSERA_ISSUER, TESSERA_AUDIENCE, TESSERA_ALGORITHMS } = process.env;
if (!TESSERA_JWKS_URL || !TESSERA_ISSUER) {
  throw new Error('set TESSERA_JWKS_URL and TESSERA_ISSUER (and TESSERA_AUDIENCE)');
}
// One key set for the process: jose caches the keys and refetches on an unknown kid.
const jwks = createRemoteJWKSet(new URL(TESSERA_JWKS_URL));

/** The claims of a valid tessera access token; throws (a jose error) when it is not. */
export async function verifyAccessToken(token) {
  const { payload } = await jwtVerify(token, jwks, {
    issuer: TESSERA_ISSUER,
    audience: TESSERA_AUDIENCE ?? 'tessera',
    algorithms: (TESSERA_ALGORITHMS ?? 'ES256').split(','),
    typ: 'at+jwt',
  });
  return payload;
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    const claims = await verifyAccessToken(process.argv[2] ?? '');
    console.log(JSON.stringify(claims));
  } catch (error) {
    console.error(`invalid token: ${error.code ?? error.name}: ${error.message}`);
    process.exitCode = 1;
  }
}
