// The interop authorization server for tests/interop.rs: oidc-provider on 127.0.0.1.
//
//   node tests/interop/server.mjs [--port PORT] [--exit-with-stdin]
//
// The port comes from --port or INTEROP_PORT (required: the caller picks a free one, since
// port 0 is not supported everywhere). When listening it prints one line on stdout:
//
//   ready http://127.0.0.1:PORT
//
// where the URL is the issuer. Environment:
//   INTEROP_ACCESS_TOKEN_TTL        users' access-token lifetime in seconds (default 300)
//   INTEROP_CLIENT_CREDENTIALS_TTL  client-credentials token lifetime in seconds (default 600)
// With --exit-with-stdin it exits when its stdin closes, so a test process that dies without
// killing it does not leave it running.

import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import { createProvider } from './provider.mjs';

function fail(message) {
  process.stderr.write(`interop server: ${message}\n`);
  process.exit(2);
}

function seconds(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isSafeInteger(value) || value <= 0) fail(`${name} must be a positive number of seconds, not ${JSON.stringify(raw)}`);
  return value;
}

const { values } = parseArgs({
  options: {
    port: { type: 'string' },
    'exit-with-stdin': { type: 'boolean', default: false },
  },
});
const rawPort = values.port ?? process.env.INTEROP_PORT;
const port = Number(rawPort);
if (rawPort === undefined || !Number.isInteger(port) || port < 1 || port > 65535) {
  fail(`give a port from 1 to 65535 with --port or INTEROP_PORT, not ${JSON.stringify(rawPort)}`);
}

const host = '127.0.0.1';
const issuer = `http://${host}:${port}`;
const provider = createProvider({
  issuer,
  accessTokenTtl: seconds('INTEROP_ACCESS_TOKEN_TTL', 300),
  clientCredentialsTtl: seconds('INTEROP_CLIENT_CREDENTIALS_TTL', 600),
});

// A log on stderr of what the responses do not say (oidc-provider keeps the reason of an
// invalid_grant to itself): tests show it when they fail.
function log(line) {
  process.stderr.write(`interop server: ${line}\n`);
}
const detail = (error) => `${error.error ?? error.message}${error.error_detail ? ` (${error.error_detail})` : ''}`;
const clientOf = (ctx) => ctx.oidc?.client?.clientId ?? '-';
provider.on('grant.success', (ctx) => log(`token: ${ctx.oidc.params.grant_type} for ${clientOf(ctx)}`));
provider.on('grant.error', (ctx, error) => log(`token: ${ctx.oidc?.params?.grant_type ?? '-'} for ${clientOf(ctx)} refused: ${detail(error)}`));
provider.on('grant.revoked', (ctx, grantId) => log(`grant ${grantId} of ${clientOf(ctx)} revoked`));
provider.on('revocation.error', (ctx, error) => log(`revocation for ${clientOf(ctx)} refused: ${detail(error)}`));
provider.on('introspection.error', (ctx, error) => log(`introspection for ${clientOf(ctx)} refused: ${detail(error)}`));
provider.on('server_error', (_ctx, error) => log(`server error: ${error.stack ?? error}`));

const server = createServer(provider.callback());
server.on('error', (error) => fail(`cannot listen on ${host}:${port}: ${error.code ?? error.message}`));
server.listen(port, host, () => {
  process.stdout.write(`ready ${issuer}\n`);
});

function stop() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
if (values['exit-with-stdin']) {
  process.stdin.on('end', stop);
  process.stdin.on('close', stop);
  process.stdin.resume();
}
