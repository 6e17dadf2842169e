// The clients registered at the interop authorization server, all confidential.
// tests/interop.rs holds the same ids and secrets; change both together.

import * as delegation from './grants/delegation.mjs';
import * as signIn from './grants/sign-in.mjs';
import * as tokenExchange from './grants/token-exchange.mjs';

export const clients = [
  {
    // Client credentials with HTTP Basic. The secret has characters that the form-encoding
    // before Base64 (RFC 6749 §2.3.1) changes, so a client that skips it is refused.
    client_id: 'billing-basic',
    client_secret: 'basic s3cret: with+plus/slash%percent',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'api:read api:write reports:read',
  },
  {
    // Client credentials with the secret in the form.
    client_id: 'billing-post',
    client_secret: 'post-s3cret+&=',
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'api:read api:write reports:read',
  },
  {
    // A web app acting for signed-in users: the test sign-in grant stands in for its
    // authorization-code flow; it refreshes users' tokens and revokes them at sign-out.
    client_id: 'web',
    client_secret: 'web-s3cret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['refresh_token', signIn.grantType],
    response_types: [],
    redirect_uris: [],
  },
  {
    // A middle tier (API 1) calling API 2 on behalf of the users whose tokens it receives: it
    // exchanges a user's access token for one of its own for API 2, with token exchange
    // (RFC 8693) or the custom `delegation` grant. Client credentials gives it tokens as itself
    // (to send as token exchange's actor_token, say).
    client_id: 'api1',
    client_secret: 'api1-s3cret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: [tokenExchange.grantType, delegation.grantType, 'client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'api2:read api2:write',
  },
  {
    // A resource server checking tokens at the introspection endpoint (RFC 7662); it is
    // issued no tokens itself.
    client_id: 'introspector',
    client_secret: 'introspector-s3cret',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  },
];
