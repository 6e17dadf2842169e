// A test-only extension grant that signs a user in without a browser:
//
//   POST /token  grant_type=urn:tokenwarden:test:sign-in&username=alice[&scope=..][&resource=..]
//
// It stands in for the authorization-code flow (a browser, a login form, a consent screen, a
// code), which tokenwarden does not implement: an app signs its users in with its own code and
// hands the tokens to tokenwarden. What this grant issues is made only through oidc-provider's
// own models, the way its authorization_code grant does: a Grant holding the consented scope
// for one resource, an AccessToken and a RefreshToken bound to that Grant. So everything the
// library is tested on afterwards (refresh, rotation, reuse detection that revokes the whole
// grant, revocation, introspection) runs through oidc-provider's own code, unchanged.

import { errors } from 'oidc-provider';

import { resourceServers, userResource } from '../resources.mjs';

export const grantType = 'urn:tokenwarden:test:sign-in';

export const parameters = ['username', 'scope', 'resource'];

export async function handler(ctx) {
  const { provider, client, params } = ctx.oidc;
  if (!params.username) {
    throw new errors.InvalidRequest("missing required parameter 'username'");
  }
  const resource = params.resource ?? userResource;
  const info = resourceServers[resource];
  if (!info) {
    throw new errors.InvalidTarget();
  }
  const offered = new Set(info.scope.split(' '));
  const scope = params.scope ?? info.scope;
  const unknown = scope.split(' ').filter((s) => !offered.has(s));
  if (unknown.length > 0) {
    throw new errors.InvalidScope('requested scope is not offered by the resource', unknown.join(' '));
  }

  const accountId = params.username;
  const grant = new provider.Grant({ accountId, clientId: client.clientId });
  grant.addResourceScope(resource, scope);
  const grantId = await grant.save();
  ctx.oidc.entity('Grant', grant);

  const accessToken = new provider.AccessToken({
    accountId,
    client,
    grantId,
    gty: grantType,
    scope,
    resourceServer: new provider.ResourceServer(resource, info),
  });
  ctx.oidc.entity('AccessToken', accessToken);
  const accessTokenValue = await accessToken.save();

  // The refresh-token grant reads these fields (the same ones authorization_code sets):
  // resource, so refreshed access tokens are for the same API; rotations, counted on rotation.
  const refreshToken = new provider.RefreshToken({
    accountId,
    client,
    grantId,
    gty: grantType,
    scope,
    resource,
    rotations: 0,
    expiresWithSession: false,
  });
  ctx.oidc.entity('RefreshToken', refreshToken);
  const refreshTokenValue = await refreshToken.save();

  ctx.body = {
    access_token: accessTokenValue,
    token_type: accessToken.tokenType,
    expires_in: accessToken.expiration,
    refresh_token: refreshTokenValue,
    scope,
  };
}
