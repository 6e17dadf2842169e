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
};

// The resource a user's sign-in is for when it names none.
export const userResource = 'urn:tokenwarden:test:api';
