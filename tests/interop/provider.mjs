// The interop authorization server's configuration: oidc-provider with client credentials,
// resource indicators, refresh-token rotation, revocation, introspection and discovery, plus
// the test-only grants of grants/.
//
// Everything tokenwarden is tested on here is oidc-provider's own code: the token endpoint and
// its client authentication (client_secret_basic, client_secret_post), client credentials,
// resource indicators, the refresh-token grant with rotation and reuse detection, revocation,
// introspection and discovery. The only code of ours that issues tokens is the test-only
// grants: one standing in for the browser sign-in (grants/sign-in.mjs), and token exchange
// (RFC 8693) and a custom `delegation` grant (grants/token-exchange.mjs, grants/delegation.mjs,
// sharing exchange.mjs), which oidc-provider does not implement. They issue tokens through
// oidc-provider's models, so what happens to those tokens afterwards is its own code again.

import Provider, { errors } from 'oidc-provider';

import { clients } from './clients.mjs';
import * as delegation from './grants/delegation.mjs';
import * as signIn from './grants/sign-in.mjs';
import * as tokenExchange from './grants/token-exchange.mjs';
import { resourceServers } from './resources.mjs';

// The test-only grants, registered with oidc-provider's registerGrantType hook. Each module
// exports `grantType`, `parameters` (the form parameters it reads, besides grant_type and
// client authentication), optionally `dupes` (those of them that may be repeated; any other
// repeated parameter is invalid_request) and `handler(ctx)`.
const grants = [signIn, tokenExchange, delegation];

// An authorization server for `issuer` (`http://127.0.0.1:PORT`). `accessTokenTtl` is the
// lifetime in seconds of users' access tokens (refreshed ones too); short ones let tests see a
// token expire at the server.
export function createProvider({ issuer, accessTokenTtl, clientCredentialsTtl }) {
  const provider = new Provider(issuer, {
    clients,
    // Every scope a resource server offers; clients' `scope` metadata is checked against these.
    scopes: [...new Set(Object.values(resourceServers).flatMap((info) => info.scope.split(' ')))],
    // Users exist as soon as a test signs them in; the refresh grant looks them up.
    async findAccount(_ctx, accountId) {
      return { accountId, claims: async () => ({ sub: accountId }) };
    },
    features: {
      // No login or consent pages: users sign in with the test grant.
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: {
        enabled: true,
        // The introspecting resource server sees every token; a client, its own.
        async allowedPolicy(ctx, client, token) {
          return client.clientId === 'introspector' || client.clientId === token.clientId;
        },
      },
      // A client revokes its own tokens only (oidc-provider refuses others'). Revoking a
      // refresh token revokes its grant, the access tokens with it; revoking an access token
      // revokes only that token.
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // A refresh without a `resource` parameter gets an access token for the resource the
        // user's grant is for.
        async useGrantedResource() {
          return true;
        },
        async getResourceServerInfo(_ctx, resource) {
          const info = resourceServers[resource];
          if (!info) {
            throw new errors.InvalidTarget();
          }
          return info;
        },
      },
    },
    // One-time refresh tokens: each refresh consumes the one sent and issues a new one. A
    // consumed one sent again is refused (invalid_grant) and the whole grant is revoked, the
    // new refresh token with it.
    rotateRefreshToken: true,
    // Refresh tokens for every client allowed the refresh grant (not only with offline_access);
    // setting this is also what enables the refresh_token grant.
    async issueRefreshToken(_ctx, client) {
      return client.grantTypeAllowed('refresh_token');
    },
    ttl: {
      AccessToken: accessTokenTtl,
      ClientCredentials: clientCredentialsTtl,
      Grant: 14 * 24 * 60 * 60,
      RefreshToken: 14 * 24 * 60 * 60,
    },
    // Claims a grant set on an access token it issues (`token.extra`, such as the `act` claim of
    // exchange.mjs), stored with the token as they are: introspection shows them. oidc-provider
    // replaces `extra` with what this returns when it saves a token, so it hands it back.
    async extraTokenClaims(_ctx, token) {
      return token.extra;
    },
    // Only loopback http is ever used; no cookies are set by the endpoints tested.
    cookies: { keys: ['tokenwarden-interop-only'] },
  });
  for (const grant of grants) {
    provider.registerGrantType(grant.grantType, grant.handler, grant.parameters, grant.dupes);
  }
  return provider;
}
