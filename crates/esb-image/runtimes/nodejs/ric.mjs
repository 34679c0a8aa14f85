// esb's runtime interface client for Node.js functions: the Lambda Runtime API loop that
// the supervisor serves at AWS_LAMBDA_RUNTIME_API, with the behaviour of AWS's own client
// (aws-lambda-ric): handlers as `file.export` (CommonJS or ES modules, async or callback
// style), init errors, unhandled rejections, callbackWaitsForEmptyEventLoop, the context
// object, the trace id in _X_AMZN_TRACE_ID, and console output framed on the telemetry
// descriptor with its level.
//
// It lives in the supervisor's layer of every image (/var/runtime/esb/ric.mjs); the
// supervisor runs it as `node /var/runtime/esb/ric.mjs` for nodejs* runtimes.

import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import util from 'node:util';
import { createRequire, register } from 'node:module';
import { pathToFileURL } from 'node:url';

const API = process.env.AWS_LAMBDA_RUNTIME_API || '127.0.0.1:9001';
const TASK_ROOT = process.env.LAMBDA_TASK_ROOT || '/var/task';
const HANDLER = process.env._HANDLER || '';
const [API_HOST, API_PORT] = API.split(':');
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });

// --- Errors, as aws-lambda-ric names them ------------------------------------------------

function runtimeError(kind) {
  const C = class extends Error {};
  Object.defineProperty(C.prototype, 'name', { value: `Runtime.${kind}` });
  return C;
}
const ImportModuleError = runtimeError('ImportModuleError');
const HandlerNotFound = runtimeError('HandlerNotFound');
const MalformedHandlerName = runtimeError('MalformedHandlerName');
const UserCodeSyntaxError = runtimeError('UserCodeSyntaxError');
const UnhandledPromiseRejectionBase = runtimeError('UnhandledPromiseRejection');
class UnhandledPromiseRejection extends UnhandledPromiseRejectionBase {
  constructor(reason, promise) {
    super(reason === undefined ? 'undefined' : String(reason));
    this.reason = reason;
    this.promise = promise;
  }
}

function isError(e) {
  return util.types.isNativeError(e) || (e instanceof Error);
}

/** The Runtime API error document: {errorType, errorMessage, trace}. */
function errorDocument(e) {
  try {
    if (isError(e) || (e && typeof e === 'object' && typeof e.stack === 'string' && 'message' in e)) {
      const doc = {
        errorType: String(e.name ?? 'Error'),
        errorMessage: String(e.message ?? ''),
        trace: typeof e.stack === 'string' ? e.stack.split('\n') : [],
      };
      if (e instanceof UnhandledPromiseRejection) {
        doc.reason = isError(e.reason) ? errorDocument(e.reason) : e.reason;
        doc.promise = {};
      }
      return doc;
    }
    return { errorType: typeof e, errorMessage: String(e), trace: [] };
  } catch {
    return {
      errorType: 'handled',
      errorMessage:
        'callback called with Error argument, but there was a problem while retrieving one or more of its message, name, and stack',
    };
  }
}

// --- Console: levels, text or JSON format, telemetry frames ------------------------------

const LEVELS = {
  TRACE: { priority: 1, mask: 0b00100 },
  DEBUG: { priority: 2, mask: 0b01000 },
  INFO: { priority: 3, mask: 0b01100 },
  WARN: { priority: 4, mask: 0b10000 },
  ERROR: { priority: 5, mask: 0b10100 },
  FATAL: { priority: 6, mask: 0b11000 },
};
const JSON_FORMAT = (process.env.AWS_LAMBDA_LOG_FORMAT || '').toUpperCase() === 'JSON';
const MIN_LEVEL = LEVELS[(process.env.AWS_LAMBDA_LOG_LEVEL || '').toUpperCase()]?.priority ?? 0;
const TELEMETRY_FD = Number.parseInt(process.env._LAMBDA_TELEMETRY_LOG_FD ?? '', 10);
delete process.env._LAMBDA_TELEMETRY_LOG_FD;
let currentRequestId;

function writeFrame(level, message) {
  const body = Buffer.from(message, 'utf8');
  const head = Buffer.alloc(16);
  const type = (JSON_FORMAT ? 0xa55a0002 : 0xa55a0003) | level.mask;
  head.writeUInt32BE(type >>> 0, 0);
  head.writeUInt32BE(body.length, 4);
  head.writeBigUInt64BE(BigInt(Date.now()) * 1000n, 8);
  fs.writeSync(TELEMETRY_FD, Buffer.concat([head, body]));
}

function logLine(levelName, args) {
  const level = LEVELS[levelName];
  if (JSON_FORMAT && level.priority < MIN_LEVEL) return;
  const timestamp = new Date().toISOString();
  let message;
  if (JSON_FORMAT) {
    const rec = { timestamp, level: levelName, requestId: currentRequestId };
    if (args.length === 1 && isError(args[0])) {
      const d = errorDocument(args[0]);
      Object.assign(rec, { message: util.format(args[0]), errorType: d.errorType, errorMessage: d.errorMessage, stackTrace: d.trace });
    } else {
      rec.message = util.format(...args);
    }
    message = JSON.stringify(rec);
  } else {
    message = `${timestamp}\t${currentRequestId ?? 'undefined'}\t${levelName}\t${util.format(...args)}`;
  }
  if (Number.isInteger(TELEMETRY_FD)) {
    writeFrame(level, message);
  } else {
    // One record per line on stdout: a multi-line message keeps its lines together.
    process.stdout.write(message.replace(/\n/g, '\r') + '\n');
  }
}

console.trace = (...a) => logLine('TRACE', a);
console.debug = (...a) => logLine('DEBUG', a);
console.info = (...a) => logLine('INFO', a);
console.log = (...a) => logLine('INFO', a);
console.warn = (...a) => logLine('WARN', a);
console.error = (...a) => logLine('ERROR', a);
console.fatal = (...a) => logLine('FATAL', a);

// --- The Runtime API ---------------------------------------------------------------------

function call(method, urlPath, body, headers = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: API_HOST, port: API_PORT, method, path: urlPath, agent, headers },
      (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}

const BASE = '/2018-06-01/runtime';

async function postError(urlPath, err) {
  const doc = errorDocument(err);
  let body;
  try {
    body = JSON.stringify(doc);
  } catch {
    body = JSON.stringify({ errorType: doc.errorType, errorMessage: doc.errorMessage, trace: doc.trace });
  }
  await call('POST', urlPath, body, {
    'Content-Type': 'application/json',
    'Lambda-Runtime-Function-Error-Type': doc.errorType,
  });
}

function fatal(e) {
  process.stderr.write(`esb node runtime: the Runtime API at ${API} failed: ${e?.stack ?? e}\n`);
  process.exit(1);
}

// --- Loading the handler -----------------------------------------------------------------

function hasTypeModule(dir) {
  for (let d = dir; ; d = path.dirname(d)) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(d, 'package.json'), 'utf8'));
      return pkg.type === 'module';
    } catch (e) {
      if (e.code !== 'ENOENT') return false;
    }
    if (d === path.dirname(d) || d === '/') return false;
  }
}

async function loadModule(root, moduleName) {
  const base = path.resolve(root, moduleName);
  const require = createRequire(path.join(root, 'index.js'));
  for (const ext of ['.js', '.mjs', '.cjs']) {
    const file = base + ext;
    if (!fs.existsSync(file)) continue;
    if (ext === '.mjs' || (ext === '.js' && hasTypeModule(path.dirname(file)))) {
      return import(pathToFileURL(file).href);
    }
    return require(file);
  }
  // Not a file of the task root: a module found by NODE_PATH (a layer's), as on Lambda.
  return require(moduleName);
}

async function loadHandler() {
  const slash = HANDLER.lastIndexOf('/');
  const dir = slash >= 0 ? HANDLER.slice(0, slash) : '';
  const spec = slash >= 0 ? HANDLER.slice(slash + 1) : HANDLER;
  const m = /^([^.]*)\.(.*)$/.exec(spec);
  if (!m || !m[1] || !m[2]) {
    throw new MalformedHandlerName("Bad handler");
  }
  const [, moduleName, handlerPath] = m;
  let mod;
  try {
    mod = await loadModule(path.resolve(TASK_ROOT, dir), moduleName);
  } catch (e) {
    if (e instanceof SyntaxError) {
      throw new UserCodeSyntaxError(`${e.name}: ${e.message}`);
    }
    if (e?.code === 'MODULE_NOT_FOUND' || e?.code === 'ERR_MODULE_NOT_FOUND') {
      const err = new ImportModuleError(`${e.name}: ${e.message}`);
      err.stack = e.stack;
      throw err;
    }
    throw e;
  }
  const lookup = (o) => handlerPath.split('.').reduce((x, p) => x?.[p], o);
  let fn = lookup(mod);
  if (fn === undefined && mod?.default !== undefined && mod.default !== null) {
    // A CommonJS module imported as an ES module: its exports are the default export.
    fn = lookup(mod.default);
  }
  if (fn === undefined || fn === null) {
    throw new HandlerNotFound(`${spec} is undefined or not exported`);
  }
  if (typeof fn !== 'function') {
    throw new HandlerNotFound(`${spec} is not a function`);
  }
  return fn;
}

// --- Event loop listeners ---------------------------------------------------------------

// What runs when the event loop becomes empty: set per invocation (a callback's result
// waiting for callbackWaitsForEmptyEventLoop, or the null answer of a handler that never
// finished).
let onEmptyLoop = () => {};
process.on('beforeExit', () => onEmptyLoop());

// An error outside the handler's own promise or callback: reported for the invocation in
// flight (or as the init error), then the process exits, as aws-lambda-ric does.
let reportFatal = async (err) => {
  await postError(`${BASE}/init/error`, err).catch(() => {});
  process.exit(129);
};
process.on('uncaughtException', (err) => {
  console.error('Uncaught Exception', JSON.stringify(errorDocument(err)));
  reportFatal(err);
});
process.on('unhandledRejection', (reason, promise) => {
  const err = new UnhandledPromiseRejection(isError(reason) ? `${reason.name}: ${reason.message}` : reason, promise);
  err.reason = reason;
  console.error('Unhandled Promise Rejection', JSON.stringify(errorDocument(err)));
  reportFatal(err);
});

// --- Invocations ------------------------------------------------------------------------

function parseJsonHeader(v) {
  if (!v) return undefined;
  try {
    return JSON.parse(v);
  } catch {
    return undefined;
  }
}

function invoke(handler, inv) {
  return new Promise((resolveDone) => {
    const id = inv.headers['lambda-runtime-aws-request-id'];
    const deadline = Number(inv.headers['lambda-runtime-deadline-ms'] || 0);
    let finished = false;
    let waitsForEmptyLoop = true;

    const finish = (post) => {
      if (finished) {
        console.error('Invocation has already been reported as done. Cannot call complete more than once per invocation.');
        return;
      }
      finished = true;
      onEmptyLoop = () => {};
      post().then(resolveDone, fatal);
    };
    const succeed = (result) =>
      finish(() => {
        let body;
        try {
          body = JSON.stringify(result === undefined ? null : result);
        } catch (e) {
          return postError(`${BASE}/invocation/${id}/error`, e);
        }
        return call('POST', `${BASE}/invocation/${id}/response`, body ?? 'null', { 'Content-Type': 'application/json' });
      });
    const fail = (err) => {
      console.error('Invoke Error', JSON.stringify(errorDocument(err)));
      finish(() => postError(`${BASE}/invocation/${id}/error`, err));
    };
    const callback = (err, result) => {
      onEmptyLoop = () => {};
      if (err !== undefined && err !== null) {
        fail(err);
      } else if (waitsForEmptyLoop) {
        onEmptyLoop = () => setImmediate(() => succeed(result));
      } else {
        succeed(result);
      }
    };
    const context = {
      get callbackWaitsForEmptyEventLoop() {
        return waitsForEmptyLoop;
      },
      set callbackWaitsForEmptyEventLoop(v) {
        waitsForEmptyLoop = Boolean(v);
      },
      functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
      functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
      invokedFunctionArn: inv.headers['lambda-runtime-invoked-function-arn'],
      memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
      awsRequestId: id,
      logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
      logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
      identity: parseJsonHeader(inv.headers['lambda-runtime-cognito-identity']),
      clientContext: parseJsonHeader(inv.headers['lambda-runtime-client-context']),
      getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
      done: (err, result) => (err !== undefined && err !== null ? fail(err) : succeed(result)),
      succeed: (result) => succeed(result),
      fail: (err) => fail(err ?? 'handled'),
    };

    const trace = inv.headers['lambda-runtime-trace-id'];
    if (trace) process.env._X_AMZN_TRACE_ID = trace;
    else delete process.env._X_AMZN_TRACE_ID;
    currentRequestId = id;
    reportFatal = async (err) => {
      if (!finished) {
        finished = true;
        await postError(`${BASE}/invocation/${id}/error`, err).catch(() => {});
      }
      process.exit(129);
    };
    // A handler that returns no promise and never calls back is answered with null once
    // nothing is left to run, as on Lambda.
    onEmptyLoop = () => succeed(null);

    let event;
    try {
      event = JSON.parse(inv.body.toString('utf8'));
    } catch (e) {
      fail(e);
      return;
    }
    try {
      const result = handler(event, context, callback);
      if (result && typeof result.then === 'function') {
        result.then(succeed, (e) => fail(e ?? new Error('handled'))).catch(fail);
      }
    } catch (e) {
      callback(e);
    }
  });
}

async function main() {
  // ES modules ignore NODE_PATH. The base's SDK is found without help (the base links
  // /var/node_modules to it); layers' packages (/opt/nodejs/...) need a resolve hook that
  // gives bare imports NODE_PATH's directories. The hook costs tens of milliseconds of
  // start-up (a loader thread), so it is only registered when a layer brings packages.
  if (fs.existsSync('/opt/nodejs')) {
    try {
      register('./resolve.mjs', import.meta.url);
    } catch {
      // Older Node.js without module.register: CommonJS still finds everything.
    }
  }
  let handler;
  try {
    handler = await loadHandler();
  } catch (e) {
    console.error(e instanceof Error && e.name.startsWith('Runtime.') ? `${e.name}: ${e.message}` : e);
    await postError(`${BASE}/init/error`, e).catch(() => {});
    process.exit(129);
  }
  for (;;) {
    let inv;
    try {
      inv = await call('GET', `${BASE}/invocation/next`);
    } catch (e) {
      fatal(e);
    }
    if (inv.status !== 200) {
      fatal(new Error(`GET invocation/next answered ${inv.status}: ${inv.body}`));
    }
    await invoke(handler, inv);
  }
}

main().catch(fatal);
