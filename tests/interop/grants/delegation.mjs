// A custom extension grant (RFC 6749 §4.5) for the same thing as token exchange, the way some
// servers named it before RFC 8693: a middle tier trades a user's access token for its own
// token for another API.
//
//   POST /token  grant_type=delegation&token=USER_ACCESS_TOKEN[&scope=..][&resource=URI]...
//                [&audience=NAME]...
//
// The checks and the token issued are token exchange's (exchange.mjs): `token` must be a live
// access token this server issued, its grant not revoked (otherwise `invalid_grant`); a missing
// `token` is `invalid_request`; the resource and scope rules are the same; the actor recorded
// in `act` is the requesting client. The response is a plain RFC 6749 §5.1 token response (no
// `issued_token_type`).

import { errors } from 'oidc-provider';

import {
  actClaim, findSubjectToken, findTarget, issueOnBehalf, scopeFor,
} from '../exchange.mjs';

export const grantType = 'delegation';

export const parameters = ['token', 'scope', 'resource', 'audience'];

export const dupes = ['audience', 'resource'];

export async function handler(ctx) {
  const { client, params } = ctx.oidc;
  if (!params.token) {
    throw new errors.InvalidRequest("missing required parameter 'token'");
  }

  const subject = await findSubjectToken(ctx, params.token);
  const target = findTarget(params);
  const scope = scopeFor(client, target.info, params.scope);

  const { value, accessToken } = await issueOnBehalf(ctx, {
    subject,
    target,
    scope,
    gty: grantType,
    act: actClaim(client.clientId, subject),
  });

  ctx.body = {
    access_token: value,
    token_type: accessToken.tokenType,
    expires_in: accessToken.expiration,
    scope,
  };
}
