// The resource servers (APIs) access tokens are issued for, named by RFC 8707 resource
// indicators. Their tokens are opaque, so the introspection endpoint answers for them (it
// refuses JWTs).

export const resourceServers = {
  'urn:tokenwarden:test:api': {
    scope: 'api:read api:write',
    accessTokenFormat: 'opaque',
  },
  'urn:tokenwarden:test:reports': {
    scope: 'reports:read',
    accessTokenFormat: 'opaque',
  },
  // API 2, called by the middle tier (the `api1` client) on behalf of a user, with a token it
  // gets by exchanging the user's (grants/token-exchange.mjs, grants/delegation.mjs).
  'urn:tokenwarden:test:api2': {
    scope: 'api2:read api2:write',
    accessTokenFormat: 'opaque',
  },
};

// The resource a user's sign-in is for when it names none.
export const userResource = 'urn:tokenwarden:test:api';
// The resource an exchanged token is for when the request names none.
export const exchangeResource = 'urn:tokenwarden:test:api2';
