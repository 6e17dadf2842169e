// What the exchange grants (grants/token-exchange.mjs, grants/delegation.mjs) share: a client
// sends a user's access token (the subject token) and gets an access token of its own for
// another API, on that user's behalf. Everything goes through oidc-provider's models, the way
// its own grants (client_credentials.js, refresh_token.js) use them:
//
// - the subject token is looked up with `AccessToken.find`, so only a live access token this
//   server issued is accepted, and its Grant must still exist (it is gone once the user's
//   refresh token is revoked or replayed);
// - the new token is an `AccessToken` for the requesting client, with the subject's accountId,
//   bound to a new Grant of that client holding the scope issued (introspection checks that
//   the token's client and account are its grant's), and for one resource server, whose
//   identifier becomes its `aud`;
// - the acting client is recorded as an RFC 8693 `act` claim in the token's `extra`, which
//   provider.mjs's `extraTokenClaims` keeps and introspection shows.

import { errors } from 'oidc-provider';

import { exchangeResource, resourceServers } from './resources.mjs';

// A form parameter registered in `dupes` is a string once, an array when repeated.
const all = (value) => {
  if (value === undefined) return [];
  return Array.isArray(value) ? value : [value];
};

// The user's access token `value` sent by the requesting client, or the `invalid_grant`
// that says why it is not accepted (the reason goes to the server's log, not the response).
export async function findSubjectToken(ctx, value) {
  const { provider } = ctx.oidc;
  // An expired token is found too, so its refusal says so; a revoked one is deleted, so it is
  // as unknown as a made-up value, a refresh token or a client-credentials token.
  const token = await provider.AccessToken.find(value, { ignoreExpiration: true });
  if (!token) {
    throw new errors.InvalidGrant('subject token not found (unknown, revoked, or not an access token)');
  }
  if (token.isExpired) {
    throw new errors.InvalidGrant('subject token is expired');
  }
  if (!token.accountId) {
    throw new errors.InvalidGrant('subject token has no subject');
  }
  if (token.grantId) {
    const grant = await provider.Grant.find(token.grantId, { ignoreExpiration: true });
    if (!grant) {
      throw new errors.InvalidGrant("subject token's grant not found (revoked)");
    }
    if (grant.isExpired) {
      throw new errors.InvalidGrant("subject token's grant is expired");
    }
    if (grant.clientId !== token.clientId || grant.accountId !== token.accountId) {
      throw new errors.InvalidGrant("subject token does not match its grant");
    }
  }
  const account = await provider.Account.findAccount(ctx, token.accountId, token);
  if (!account) {
    throw new errors.InvalidGrant('subject token invalid (referenced account not found)');
  }
  ctx.oidc.entity('Account', account);
  return token;
}

// The resource server a token is asked for: named by `resource` (RFC 8707, an absolute URI)
// and/or `audience` (RFC 8693, a resource server's identifier or its `audience`), each of which
// may be repeated; all must name the same one, since an oidc-provider access token has a single
// audience. Neither: the API behind the middle tier (`exchangeResource`).
export function findTarget({ resource, audience }) {
  const named = new Set();
  for (const identifier of all(resource)) {
    let url;
    try {
      url = new URL(identifier);
    } catch {
      throw new errors.InvalidTarget('resource indicator must be an absolute URI');
    }
    if (url.href.includes('#')) {
      throw new errors.InvalidTarget('resource indicator must not contain a fragment component');
    }
    if (!resourceServers[identifier]) {
      throw new errors.InvalidTarget(`unknown resource ${identifier}`);
    }
    named.add(identifier);
  }
  for (const name of all(audience)) {
    const identifier = Object.keys(resourceServers)
      .find((id) => id === name || resourceServers[id].audience === name);
    if (!identifier) {
      throw new errors.InvalidTarget(`unknown audience ${name}`);
    }
    named.add(identifier);
  }
  if (named.size > 1) {
    throw new errors.InvalidTarget('only a single resource or audience is supported');
  }
  const [identifier = exchangeResource] = named;
  return { identifier, info: resourceServers[identifier] };
}

// The scope to issue: what was asked (`requested`, space-separated), or when nothing was,
// everything the resource server offers that the client may have. A scope the resource server
// does not offer, or that the client's `scope` metadata does not allow, is `invalid_scope`.
export function scopeFor(client, info, requested) {
  const offered = new Set(info.scope.split(' '));
  const allowed = client.scope ? new Set(client.scope.split(' ')) : offered;
  const scopes = requested
    ? [...new Set(requested.split(' ').filter(Boolean))]
    : [...offered].filter((s) => allowed.has(s));
  const unknown = scopes.filter((s) => !offered.has(s));
  if (unknown.length > 0) {
    throw new errors.InvalidScope('requested scope is not offered by the resource', unknown.join(' '));
  }
  const refused = scopes.filter((s) => !allowed.has(s));
  if (refused.length > 0) {
    throw new errors.InvalidScope('requested scope is not allowed', refused.join(' '));
  }
  if (scopes.length === 0) {
    throw new errors.InvalidScope('no scope of the resource is allowed for this client');
  }
  return scopes.join(' ');
}

// The RFC 8693 §4.1 `act` claim of a token issued to `actor` (a client id) from `subject`: the
// actor, and the subject token's own `act`, if it was itself exchanged, nested inside.
export function actClaim(actor, subject) {
  const act = { sub: actor };
  if (subject.extra?.act) {
    act.act = subject.extra.act;
  }
  return act;
}

// A new access token for the requesting client, on behalf of the subject token's user, for the
// resource server `target` (from findTarget) with `scope`; `gty` is the grant type issuing it.
// Its lifetime is the provider's AccessToken TTL, whatever is left of the subject token's.
export async function issueOnBehalf(ctx, { subject, target, scope, gty, act }) {
  const { provider, client } = ctx.oidc;
  const { accountId } = subject;

  const grant = new provider.Grant({ accountId, clientId: client.clientId });
  grant.addResourceScope(target.identifier, scope);
  const grantId = await grant.save();
  ctx.oidc.entity('Grant', grant);

  const accessToken = new provider.AccessToken({
    accountId,
    client,
    grantId,
    gty,
    scope,
    resourceServer: new provider.ResourceServer(target.identifier, target.info),
  });
  // Kept by extraTokenClaims (provider.mjs) when the token is saved.
  accessToken.extra = { act };
  ctx.oidc.entity('AccessToken', accessToken);
  const value = await accessToken.save();
  return { value, accessToken };
}
