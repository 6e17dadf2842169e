// OAuth 2.0 Token Exchange (RFC 8693), for a middle tier calling another API as the user:
//
//   POST /token  grant_type=urn:ietf:params:oauth:grant-type:token-exchange
//                &subject_token=USER_ACCESS_TOKEN
//                &subject_token_type=urn:ietf:params:oauth:token-type:access_token
//                [&resource=URI]... [&audience=NAME]... [&scope=..]
//                [&requested_token_type=urn:ietf:params:oauth:token-type:access_token]
//                [&actor_token=..&actor_token_type=urn:ietf:params:oauth:token-type:access_token]
//
// The subject token must be a live access token this server issued (to any client), its grant
// not revoked; otherwise `invalid_grant` (RFC 8693 §2.2.2 says invalid_request, but servers
// commonly answer invalid_grant, as RFC 6749 does for a bad refresh token, and this is what
// tokenwarden reports as a rejected subject token). Missing or unsupported parameters are
// `invalid_request`; an unknown resource or audience, or several, `invalid_target`; a scope
// the resource does not offer, or the client may not have, `invalid_scope`.
//
// The issued token is an opaque access token for the requesting client: `sub` is the subject
// token's user, `aud` the resource server asked for (by default resources.mjs's
// `exchangeResource`), and `act` the actor (RFC 8693 §4.1): the actor token's user or client
// when one is sent, the requesting client otherwise, with the subject token's own `act`
// nested. Only access tokens are issued (`requested_token_type` other than access_token is
// `invalid_request`), and no refresh token.

import { errors } from 'oidc-provider';

import {
  actClaim, findSubjectToken, findTarget, issueOnBehalf, scopeFor,
} from '../exchange.mjs';

export const grantType = 'urn:ietf:params:oauth:grant-type:token-exchange';

export const parameters = [
  'subject_token',
  'subject_token_type',
  'actor_token',
  'actor_token_type',
  'requested_token_type',
  'audience',
  'resource',
  'scope',
];

// RFC 8693 §2.1: several target services, each by `resource` or `audience`.
export const dupes = ['audience', 'resource'];

const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
// The types a token this server issued as an access token may be sent as.
const ACCESS_TOKEN_TYPES = new Set([ACCESS_TOKEN_TYPE, 'urn:ietf:params:oauth:token-type:jwt']);

function required(params, name) {
  if (!params[name]) {
    throw new errors.InvalidRequest(`missing required parameter '${name}'`);
  }
}

// The actor (RFC 8693 §2.1 actor_token): a live access token or client-credentials token of the
// requesting client itself; its user, or failing one its client, is the actor.
async function findActor(ctx, value) {
  const { provider, client } = ctx.oidc;
  const token = await provider.AccessToken.find(value)
    ?? await provider.ClientCredentials.find(value);
  if (!token) {
    throw new errors.InvalidGrant('actor token not found or expired');
  }
  if (token.clientId !== client.clientId) {
    throw new errors.InvalidGrant('actor token was issued to another client');
  }
  return token.accountId ?? token.clientId;
}

export async function handler(ctx) {
  const { client, params } = ctx.oidc;

  required(params, 'subject_token');
  required(params, 'subject_token_type');
  if (!ACCESS_TOKEN_TYPES.has(params.subject_token_type)) {
    throw new errors.InvalidRequest('unsupported subject_token_type: only access tokens are exchanged');
  }
  if (params.actor_token && !params.actor_token_type) {
    throw new errors.InvalidRequest("missing required parameter 'actor_token_type' (an actor_token is sent)");
  }
  if (params.actor_token_type && !params.actor_token) {
    throw new errors.InvalidRequest("'actor_token_type' is sent without an actor_token");
  }
  if (params.actor_token_type && !ACCESS_TOKEN_TYPES.has(params.actor_token_type)) {
    throw new errors.InvalidRequest('unsupported actor_token_type: only access tokens are accepted');
  }
  if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
    throw new errors.InvalidRequest('unsupported requested_token_type: only access tokens are issued');
  }

  const subject = await findSubjectToken(ctx, params.subject_token);
  const actor = params.actor_token ? await findActor(ctx, params.actor_token) : client.clientId;
  const target = findTarget(params);
  const scope = scopeFor(client, target.info, params.scope);

  const { value, accessToken } = await issueOnBehalf(ctx, {
    subject,
    target,
    scope,
    gty: grantType,
    act: actClaim(actor, subject),
  });

  ctx.body = {
    access_token: value,
    issued_token_type: ACCESS_TOKEN_TYPE,
    token_type: accessToken.tokenType,
    expires_in: accessToken.expiration,
    scope,
  };
}
