// The daemon's HTTP face (docs/api.md): fastify with TypeBox schemas on every body (unknown fields refused,
// errors name the JSON path), the OpenAPI document, WebSockets for events, the serial console and RFB, and the
// web UI's static files. One instance per listener: the UNIX socket (the user's own, mode 0600: no token) and,
// optionally, loopback TCP, where every /api request carries the bearer token.
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import websocket from '@fastify/websocket';
import swagger from '@fastify/swagger';
import fastifyStatic from '@fastify/static';
import { timingSafeEqual } from 'node:crypto';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type Socket } from 'node:net';
import type { WebSocket } from 'ws';
import type { IncomingMessage } from 'node:http';
import type { Supervisor } from './supervisor.js';
import {
  CreateBodySchema,
  EmptyBodySchema,
  ErrorSchema,
  IsoSchema,
  PatchBodySchema,
  StartBodySchema,
  StatusSchema,
  StopBodySchema,
  VmRecordSchema,
  type CreateBody,
  type DaemonEvent,
  type PatchBody,
} from './api-schemas.js';
import { DaemonError, conflict } from './errors.js';
import { nameProblem } from './library.js';
import { Type } from '@sinclair/typebox';

export interface ApiOptions {
  readonly supervisor: Supervisor;
  readonly version: string;
  /** Bearer token every /api request must carry (the TCP listener); none on the UNIX socket. */
  readonly token?: string;
  /** The built web UI (dist/ui), served at '/' when it exists. */
  readonly uiDir?: string;
}

/** Paths of request bodies as JSON pointers: an unknown field is named by its own path. */
function validationError(error: FastifyError, body: unknown): { error: string; path: string } {
  const v = error.validation?.[0];
  if (!v) return { error: error.message, path: '' };
  const params = v.params as Record<string, unknown>;
  if (v.keyword === 'additionalProperties' && typeof params.additionalProperty === 'string')
    return {
      error: `unknown field '${params.additionalProperty}'`,
      path: `${v.instancePath}/${params.additionalProperty}`,
    };
  if (v.keyword === 'required' && typeof params.missingProperty === 'string')
    return { error: `'${params.missingProperty}' is required`, path: `${v.instancePath}/${params.missingProperty}` };
  const name = (body as { name?: unknown } | undefined)?.name;
  if (v.instancePath === '/name' && v.keyword === 'pattern' && typeof name === 'string')
    return { error: nameProblem(name) ?? `${v.message}`, path: '/name' };
  return { error: `${v.message ?? 'invalid'}`, path: v.instancePath };
}

function tokenMatches(given: string | undefined, token: string): boolean {
  if (given === undefined) return false;
  const a = Buffer.from(given);
  const b = Buffer.from(token);
  return a.length === b.length && timingSafeEqual(a, b);
}

const nameParams = Type.Object({ name: Type.String() });
const record = { 200: VmRecordSchema, '4xx': ErrorSchema };

export async function buildApi(options: ApiOptions): Promise<FastifyInstance> {
  const { supervisor } = options;
  const library = supervisor.library;
  const app = Fastify({
    logger: false,
    // Fastify's default Ajv removes unknown fields and coerces types: a body is taken as sent, or refused.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, useDefaults: false, allErrors: false } },
    bodyLimit: 1024 * 1024,
    // Closing (a daemon restart) does not wait for idle keep-alive clients or refused WebSocket upgrades.
    forceCloseConnections: true,
  });

  app.setErrorHandler((error: FastifyError, request, reply) => {
    if (error instanceof DaemonError)
      return reply
        .code(error.status)
        .send({ error: error.message, ...(error.path !== undefined ? { path: error.path } : {}) });
    if (error.validation) return reply.code(400).send(validationError(error, request.body));
    if (error.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || error instanceof SyntaxError)
      return reply.code(400).send({ error: `not valid JSON: ${error.message}`, path: '' });
    const status = error.statusCode ?? 500;
    if (status < 500) return reply.code(status).send({ error: error.message });
    process.stderr.write(`partita serve: ${error.stack ?? error.message}\n`);
    return reply.code(500).send({ error: error.message });
  });

  const token = options.token;
  if (token !== undefined) {
    app.addHook('onRequest', async (request: FastifyRequest, reply: FastifyReply) => {
      if (!request.url.startsWith('/api/') && request.url !== '/api') return; // the UI's static files
      // WebSocket upgrades are checked by verifyClient below, before fastify routes them.
      if (request.headers.upgrade?.toLowerCase() === 'websocket') return;
      const header = request.headers.authorization;
      const given = header?.startsWith('Bearer ') ? header.slice(7) : undefined;
      if (!tokenMatches(given, token)) return reply.code(401).send({ error: 'a valid bearer token is required' });
    });
  }

  await app.register(swagger, {
    openapi: {
      info: { title: 'Partita daemon API', version: options.version, description: 'docs/api.md' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    },
  });
  await app.register(websocket, {
    options: {
      maxPayload: 1024 * 1024,
      // Browsers cannot set headers on a WebSocket: an upgrade may carry the token as ?token= instead.
      ...(token !== undefined
        ? {
            verifyClient: (
              info: { req: IncomingMessage },
              done: (ok: boolean, code?: number, message?: string) => void,
            ) => {
              const header = info.req.headers.authorization;
              const query = new URL(info.req.url ?? '/', 'http://localhost').searchParams.get('token') ?? undefined;
              const given = header?.startsWith('Bearer ') ? header.slice(7) : query;
              if (tokenMatches(given, token)) done(true);
              else done(false, 401, 'a valid bearer token is required');
            },
          }
        : {}),
    },
  });
  // Closing ends every WebSocket at once: a polite close handshake with a client that is gone would hold the
  // shutdown (a daemon restart) for ws's 30 s close timeout.
  app.addHook('preClose', async () => {
    for (const client of app.websocketServer.clients) client.terminate();
  });

  // An empty body is an empty object for the action routes (POST …/start with no body is fine).
  const emptyIsObject = async (request: FastifyRequest): Promise<void> => {
    if (request.body === undefined || request.body === null) request.body = {};
  };

  app.get('/api/openapi.json', { schema: { hide: true } }, async () => app.swagger());

  app.get('/api/status', { schema: { response: { 200: StatusSchema } } }, async () => {
    const vms = supervisor.list();
    return {
      version: options.version,
      vms: vms.length,
      running: vms.filter((v) => v.state !== 'stopped' && v.state !== 'crashed').length,
      dataDir: library.dataDir,
    };
  });

  app.get('/api/isos', { schema: { response: { 200: Type.Array(IsoSchema) } } }, async () => library.isos());

  app.get(
    '/api/vms',
    {
      schema: {
        querystring: Type.Object({ all: Type.Optional(Type.String()) }),
        response: { 200: Type.Array(VmRecordSchema) },
      },
    },
    async () => supervisor.list(),
  );

  app.post<{ Body: CreateBody }>(
    '/api/vms',
    { schema: { body: CreateBodySchema, response: { 201: VmRecordSchema, '4xx': ErrorSchema } } },
    async (request, reply) => {
      const body = request.body;
      const created = await supervisor.exclusive(body.name, () => library.create(body));
      supervisor.emit('event', { type: 'created', name: created.name });
      return reply.code(201).send(created);
    },
  );

  app.get<{ Params: { name: string } }>(
    '/api/vms/:name',
    { schema: { params: nameParams, response: record } },
    async (request) => supervisor.record(request.params.name),
  );

  app.patch<{ Params: { name: string }; Body: PatchBody }>(
    '/api/vms/:name',
    { schema: { params: nameParams, body: PatchBodySchema, response: record } },
    async (request) => {
      const { name } = request.params;
      return supervisor.exclusive(name, () => {
        const current = supervisor.record(name);
        if (supervisor.isActive(name)) throw conflict(`vm '${name}' is ${current.state}: stop it first`);
        library.patch(name, request.body);
        return supervisor.record(name);
      });
    },
  );

  app.delete<{ Params: { name: string }; Querystring: { keepDisks?: string } }>(
    '/api/vms/:name',
    {
      schema: {
        params: nameParams,
        querystring: Type.Object({ keepDisks: Type.Optional(Type.String()) }, { additionalProperties: false }),
      },
    },
    async (request, reply) => {
      const { name } = request.params;
      const keep = request.query.keepDisks;
      await supervisor.exclusive(name, () => {
        const current = supervisor.record(name);
        if (supervisor.isActive(name)) throw conflict(`vm '${name}' is ${current.state}: stop it first`);
        library.delete(name, keep !== undefined && keep !== '0' && keep !== 'false');
      });
      supervisor.emit('event', { type: 'deleted', name });
      return reply.code(204).send();
    },
  );

  app.post<{ Params: { name: string }; Body: { headless?: boolean } }>(
    '/api/vms/:name/start',
    { schema: { params: nameParams, body: StartBodySchema, response: record }, preValidation: emptyIsObject },
    async (request) => supervisor.start(request.params.name),
  );
  app.post<{ Params: { name: string }; Body: { kill?: boolean } }>(
    '/api/vms/:name/stop',
    { schema: { params: nameParams, body: StopBodySchema, response: record }, preValidation: emptyIsObject },
    async (request) => supervisor.stop(request.params.name, request.body.kill === true),
  );
  app.post<{ Params: { name: string } }>(
    '/api/vms/:name/pause',
    { schema: { params: nameParams, body: EmptyBodySchema, response: record }, preValidation: emptyIsObject },
    async (request) => supervisor.pause(request.params.name),
  );
  app.post<{ Params: { name: string } }>(
    '/api/vms/:name/resume',
    { schema: { params: nameParams, body: EmptyBodySchema, response: record }, preValidation: emptyIsObject },
    async (request) => supervisor.resume(request.params.name),
  );

  app.get<{ Params: { name: string } }>(
    '/api/vms/:name/screenshot',
    { schema: { params: nameParams } },
    async (request, reply) => {
      const png = await supervisor.screenshot(request.params.name);
      return reply.type('image/png').send(Buffer.from(png));
    },
  );

  app.get('/api/events', { websocket: true, schema: { hide: true } }, (socket: WebSocket) => {
    const forward = (event: DaemonEvent): void => {
      if (socket.readyState === socket.OPEN) socket.send(JSON.stringify(event));
    };
    supervisor.on('event', forward);
    socket.on('close', () => supervisor.off('event', forward));
    socket.on('error', () => socket.terminate());
  });

  app.get<{ Params: { name: string } }>(
    '/api/vms/:name/console',
    { websocket: true, schema: { hide: true } },
    (socket: WebSocket, request) => {
      const { name } = request.params;
      const path = library.has(name) ? supervisor.serialSocket(name) : undefined;
      if (!path) return socket.close(4409, library.has(name) ? `vm '${name}' is not running` : `no VM named '${name}'`);
      bridge(socket, connect(path));
    },
  );

  app.get<{ Params: { name: string } }>(
    '/api/vms/:name/vnc',
    { websocket: true, schema: { hide: true } },
    (socket: WebSocket, request) => {
      const { name } = request.params;
      if (!library.has(name)) return socket.close(4404, `no VM named '${name}'`);
      const path = join(library.vmDir(name), 'vnc.sock');
      if (!supervisor.isActive(name) || !existsSync(path))
        return socket.close(4409, `vm '${name}' has no display running`);
      bridge(socket, connect(path));
    },
  );

  if (options.uiDir && existsSync(join(options.uiDir, 'index.html'))) {
    await app.register(fastifyStatic, { root: options.uiDir, prefix: '/', wildcard: false });
    // Client-side routes of the UI get its index page; unknown /api paths stay 404 JSON.
    app.setNotFoundHandler((request, reply) => {
      if (request.method === 'GET' && !request.url.startsWith('/api')) return reply.sendFile('index.html');
      return reply.code(404).send({ error: `no route ${request.method} ${request.url.split('?')[0]}` });
    });
  } else {
    app.setNotFoundHandler((request, reply) =>
      reply.code(404).send({ error: `no route ${request.method} ${request.url.split('?')[0]}` }),
    );
  }
  return app;
}

/** Bytes both ways between a WebSocket (binary frames) and a UNIX socket; either end closing closes the other. */
function bridge(ws: WebSocket, socket: Socket): void {
  const pending: Buffer[] = [];
  let connected = false;
  socket.on('connect', () => {
    connected = true;
    for (const b of pending) socket.write(b);
    pending.length = 0;
  });
  socket.on('data', (bytes: Buffer) => {
    if (ws.readyState !== ws.OPEN) return;
    ws.send(bytes, { binary: true });
    // Back-pressure: a slow browser pauses the VMM side rather than buffering without bound.
    if (ws.bufferedAmount > 4 * 1024 * 1024) {
      socket.pause();
      const resume = setInterval(() => {
        if (ws.readyState !== ws.OPEN || ws.bufferedAmount < 1024 * 1024) {
          clearInterval(resume);
          socket.resume();
        }
      }, 50);
    }
  });
  socket.on('error', () => ws.close(1011, 'the VM side of this connection failed'));
  socket.on('close', () => {
    if (ws.readyState === ws.OPEN || ws.readyState === ws.CONNECTING) ws.close(1000, 'closed by the VM side');
  });
  ws.on('message', (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => {
    const bytes = Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data as ArrayBuffer);
    void isBinary; // text frames (a terminal's keys) are bytes too
    if (connected) socket.write(bytes);
    else pending.push(bytes);
  });
  ws.on('close', () => socket.destroy());
  ws.on('error', () => socket.destroy());
}
