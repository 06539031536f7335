'use strict';
/**
 * Node.js client of sam3-grpc, built on @grpc/grpc-js and @grpc/proto-loader.
 *
 * Unary calls return promises; propagate() is an async iterator (break out of the loop to
 * cancel the stream); uploadVideo() streams a file from disk in chunks. Messages use the
 * field names of the .proto files (snake_case); enums are strings; 64-bit integers are
 * Numbers; bytes are Buffers. Failed calls reject with a Sam3Error carrying the status code,
 * the server's message, the machine-readable reason of its google.rpc.ErrorInfo, the field
 * violations of its google.rpc.BadRequest and, when it sent a google.rpc.RetryInfo,
 * retryAfterMs. Every call has a default deadline suited to its method (DEFAULT_TIMEOUTS_MS);
 * behind Envoy, each session's routing header is kept and sent back on every call about it.
 */

const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { once } = require('node:events');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const DEFAULT_PROTO_ROOT = process.env.SAM3_GRPC_PROTOS || path.resolve(__dirname, '..', '..', 'protos');
const PROTO_FILES = [
  'sam3_grpc/v1/segmentation_service.proto',
  'sam3_grpc/v1/video_service.proto',
  'sam3_grpc/v1/status_service.proto',
];
const LOADER_OPTIONS = {
  keepCase: true, // field names exactly as in the .proto files
  longs: Number, // int64 sizes and counts fit a double comfortably
  enums: String,
  defaults: true,
  oneofs: true, // e.g. mask.data === 'rle_counts' | 'png'
};
const MiB = 1024 * 1024;
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED]);

/**
 * Default deadline of each method in milliseconds, used when neither the call nor the client
 * sets one; null: no deadline. The same numbers as the Python client's DEFAULT_TIMEOUTS:
 * generous where a real model on a CPU is slow (a text prompt on a video frame can take
 * minutes), none for the upload and propagation streams, which the server bounds itself (idle,
 * rate and total limits on uploads; cancellation and flow control on propagation).
 */
const DEFAULT_TIMEOUTS_MS = Object.freeze({
  SegmentImage: 300000,
  StartSession: 120000,
  UploadVideo: null,
  AddPrompt: 600000,
  RemoveObject: 120000,
  ResetSession: 120000,
  Propagate: null,
  GetSession: 30000,
  ListSessions: 30000,
  CloseSession: 60000,
  GetServerStatus: 30000,
  Check: 30000,
});
const FALLBACK_TIMEOUT_MS = 30000;

/**
 * The response header with which Envoy's stateful session filter names the replica that holds
 * a session (header-based session state); sent back on every later call about that session.
 */
const ROUTING_HEADER = 'x-sam3-replica';

// google.rpc.Status and the details the server sends (RetryInfo, ErrorInfo, BadRequest), to
// read the rich error status without a generated googleapis package.
const richStatus = protobuf.Root.fromJSON({
  nested: {
    google: {
      nested: {
        protobuf: {
          nested: {
            Any: { fields: { type_url: { type: 'string', id: 1 }, value: { type: 'bytes', id: 2 } } },
            Duration: { fields: { seconds: { type: 'int64', id: 1 }, nanos: { type: 'int32', id: 2 } } },
          },
        },
        rpc: {
          nested: {
            Status: {
              fields: {
                code: { type: 'int32', id: 1 },
                message: { type: 'string', id: 2 },
                details: { rule: 'repeated', type: 'google.protobuf.Any', id: 3 },
              },
            },
            RetryInfo: { fields: { retry_delay: { type: 'google.protobuf.Duration', id: 1 } } },
            ErrorInfo: {
              fields: {
                reason: { type: 'string', id: 1 },
                domain: { type: 'string', id: 2 },
                metadata: { keyType: 'string', type: 'string', id: 3 },
              },
            },
            BadRequest: {
              fields: { field_violations: { rule: 'repeated', type: 'FieldViolation', id: 1 } },
              nested: {
                FieldViolation: {
                  fields: { field: { type: 'string', id: 1 }, description: { type: 'string', id: 2 } },
                },
              },
            },
          },
        },
      },
    },
  },
});
const StatusMessage = richStatus.lookupType('google.rpc.Status');
const RetryInfoMessage = richStatus.lookupType('google.rpc.RetryInfo');
const ErrorInfoMessage = richStatus.lookupType('google.rpc.ErrorInfo');
const BadRequestMessage = richStatus.lookupType('google.rpc.BadRequest');

const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

/**
 * A failed call.
 *   code          the gRPC status code (a number; grpc.status.NOT_FOUND...)
 *   codeName      'NOT_FOUND', 'INVALID_ARGUMENT'...
 *   details       the server's message, for people
 *   reason        why, for programs: google.rpc.ErrorInfo.reason, the name of a
 *                 sam3_grpc.v1.ErrorReason value without its prefix ('QUEUE_FULL',
 *                 'SESSION_NOT_FOUND'...); null when the status did not come from the server
 *                 (connection failure, deadline on the wire...)
 *   domain        ErrorInfo.domain ('sam3_grpc') or null
 *   metadata      ErrorInfo.metadata, an object of strings (e.g. {limit: '16'})
 *   fieldViolations  [{field, description}] from google.rpc.BadRequest (INVALID_ARGUMENT), e.g.
 *                 field 'prompts[0].points[0].point'
 *   retryAfterMs  the delay the server suggests before a retry (google.rpc.RetryInfo), or null
 *   fromServer    true when the server sent a rich status (google.rpc.Status)
 *   target        the address the call went to
 * Branch on `reason`, never on the message.
 */
class Sam3Error extends Error {
  constructor(code, details, {
    retryAfterMs = null, target = '', reason = null, domain = null, metadata = {},
    fieldViolations = [], fromServer = false,
  } = {}) {
    super(`${CODE_NAMES[code] || code}: ${details}`);
    this.name = 'Sam3Error';
    this.code = code;
    this.codeName = CODE_NAMES[code] || String(code);
    this.details = details;
    this.reason = reason;
    this.domain = domain;
    this.metadata = { ...metadata };
    this.fieldViolations = fieldViolations.map(({ field, description }) => ({ field, description }));
    this.retryAfterMs = retryAfterMs;
    this.fromServer = fromServer;
    this.target = target;
  }
}

/** The details of a rich google.rpc.Status (grpc-status-details-bin) as Sam3Error options. */
function richDetails(raw) {
  const status = StatusMessage.decode(raw);
  const found = { fromServer: true, message: status.message };
  for (const any of status.details) {
    const type = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    if (type === 'google.rpc.RetryInfo') {
      const delay = RetryInfoMessage.decode(any.value).retry_delay || {};
      found.retryAfterMs = Number(delay.seconds || 0) * 1000 + (delay.nanos || 0) / 1e6;
    } else if (type === 'google.rpc.ErrorInfo') {
      const info = ErrorInfoMessage.decode(any.value);
      found.reason = info.reason;
      found.domain = info.domain;
      found.metadata = { ...info.metadata };
    } else if (type === 'google.rpc.BadRequest') {
      found.fieldViolations = BadRequestMessage.decode(any.value).field_violations;
    }
  }
  return found;
}

/**
 * Envoy's replies when the replica a call is pinned to cannot be used: deploy/envoy's local
 * reply, then Envoy's defaults. A stream cut when the replica died arrives as INTERNAL
 * "RST_STREAM". A failure to reach the proxy itself is neither.
 */
const PROXY_LOST_REPLICA = ['the replica holding this video session', 'no healthy upstream', 'upstream connect error'];

function replicaLost(code, details) {
  if (code === grpc.status.INTERNAL) return details.includes('RST_STREAM');
  return code === grpc.status.UNAVAILABLE && PROXY_LOST_REPLICA.some((sign) => details.includes(sign));
}

/**
 * A Sam3Error from a grpc-js error. pinnedSession: the session whose routing header the call
 * carried; when the proxy says its replica is gone, the error is UNAVAILABLE with reason
 * 'REPLICA_LOST' (set by this client), which is never retried: a session cannot move.
 */
function toSam3Error(error, target, pinnedSession = null) {
  if (error instanceof Sam3Error || error.code === undefined) return error;
  let details = error.details || CODE_NAMES[error.code] || 'error';
  let options = {};
  const raw = error.metadata && error.metadata.get('grpc-status-details-bin');
  if (raw && raw.length) {
    try {
      const { message, ...rest } = richDetails(raw[0]);
      if (message) details = message;
      options = rest;
    } catch (_) {
      // A malformed detail leaves the plain status.
    }
  }
  if (pinnedSession !== null && !options.fromServer && replicaLost(error.code, details)) {
    return new Sam3Error(
      grpc.status.UNAVAILABLE,
      `the replica holding session '${pinnedSession}' is gone (${details}); a session cannot `
        + 'move to another replica: start a new session',
      { target, reason: 'REPLICA_LOST' },
    );
  }
  return new Sam3Error(error.code, details, { ...options, target });
}

/** The routing header in a call's initial metadata, or null. */
function routeIn(metadata) {
  const values = metadata ? metadata.get(ROUTING_HEADER) : [];
  return values.length ? String(values[0]) : null;
}

/**
 * The deadline of a call in milliseconds (null: none): the call's own timeoutMs, else the
 * client's, else the method's default. Streams pass clientMs undefined: a client-wide timeout
 * is for unary calls.
 */
function timeoutFor(method, callMs, clientMs) {
  if (callMs !== undefined) return callMs;
  if (clientMs !== undefined) return clientMs;
  return method in DEFAULT_TIMEOUTS_MS ? DEFAULT_TIMEOUTS_MS[method] : FALLBACK_TIMEOUT_MS;
}

/** A grpc-js deadline (a Date.now() time, or Infinity) from a timeout (null or 0: none). */
function deadlineAfter(ms) {
  return ms ? Date.now() + ms : Infinity;
}

/** Loads the sam3_grpc.v1 package (and grpc.health.v1) from the .proto files. */
function loadApi(protoRoot = DEFAULT_PROTO_ROOT) {
  const definition = protoLoader.loadSync(
    [...PROTO_FILES, path.join(__dirname, 'health.proto')],
    { ...LOADER_OPTIONS, includeDirs: [protoRoot, __dirname] },
  );
  const loaded = grpc.loadPackageDefinition(definition);
  return { v1: loaded.sam3_grpc.v1, health: loaded.grpc.health.v1 };
}

/**
 * Decodes Mask.rle_counts, COCO compressed RLE as specified in protos/sam3_grpc/v1/common.proto,
 * into a row-major Uint8Array of height*width (1 inside the mask), the same as pycocotools'
 * mask.decode. Throws a RangeError when the string is not a valid RLE of that size.
 */
function decodeRle(counts, height, width) {
  const total = height * width;
  const runs = [];
  let p = 0;
  while (p < counts.length) {
    // One variable-length integer: 5 bits per character, least significant group first.
    let number = 0;
    let read = 0;
    let v;
    do {
      if (p >= counts.length) throw new RangeError('RLE counts end inside a number');
      v = counts.charCodeAt(p) - 48;
      if (v < 0 || v > 63) throw new RangeError(`RLE counts hold an invalid character at ${p}`);
      number += (v & 0x1f) * 2 ** (5 * read);
      p += 1;
      read += 1;
    } while (v & 0x20);
    if (v & 0x10) number -= 2 ** (5 * read); // sign extension
    const i = runs.length;
    const run = i > 2 ? number + runs[i - 2] : number;
    if (run < 0) throw new RangeError(`RLE run ${i} is negative`);
    runs.push(run);
  }
  const sum = runs.reduce((a, b) => a + b, 0);
  if (sum !== total) throw new RangeError(`RLE runs cover ${sum} pixels, the mask has ${total}`);
  const mask = new Uint8Array(total);
  let start = 0; // column-major position: pixel (x, y) is x * height + y
  runs.forEach((run, i) => {
    if (i % 2 === 1) {
      for (let j = start; j < start + run; j += 1) {
        mask[(j % height) * width + Math.floor(j / height)] = 1;
      }
    }
    start += run;
  });
  return mask;
}

function toBox(values) {
  if (!Array.isArray(values) || values.length !== 4) throw new TypeError('a box is [x_min, y_min, x_max, y_max]');
  const [x_min, y_min, x_max, y_max] = values.map(Number);
  return { x_min, y_min, x_max, y_max };
}

function toPoint(values) {
  if (!Array.isArray(values) || values.length !== 2) throw new TypeError('a point is [x, y]');
  return { x: Number(values[0]), y: Number(values[1]) };
}

/** 'a dog' | {text, boxes: [[x0,y0,x1,y1]], points: [[x,y]], negativeBoxes, negativePoints} */
function toPrompt(prompt) {
  if (typeof prompt === 'string') return { text: prompt };
  const boxes = [
    ...(prompt.boxes || []).map((b) => ({ box: toBox(b), label: 'PROMPT_LABEL_POSITIVE' })),
    ...(prompt.negativeBoxes || []).map((b) => ({ box: toBox(b), label: 'PROMPT_LABEL_NEGATIVE' })),
  ];
  const points = [
    ...(prompt.points || []).map((p) => ({ point: toPoint(p), label: 'PROMPT_LABEL_POSITIVE' })),
    ...(prompt.negativePoints || []).map((p) => ({ point: toPoint(p), label: 'PROMPT_LABEL_NEGATIVE' })),
  ];
  return { text: prompt.text || '', boxes, points };
}

function toOutput(options = {}) {
  const output = {
    mask_encoding: `MASK_ENCODING_${(options.maskEncoding || 'rle').toUpperCase()}`,
    include_polygons: Boolean(options.includePolygons),
    polygon_tolerance_pixels: options.polygonTolerancePixels || 0,
    min_area_pixels: options.minAreaPixels || 0,
    max_detections: options.maxDetections || 0,
  };
  if (options.scoreThreshold !== undefined && options.scoreThreshold !== null) {
    output.score_threshold = options.scoreThreshold;
  }
  return output;
}

/** A Buffer (encoded image), a local file path, or {serverPath: 'rel/path.jpg'}. */
async function toImage(image) {
  if (Buffer.isBuffer(image) || image instanceof Uint8Array) return { content: Buffer.from(image) };
  if (typeof image === 'string') return { content: await fs.promises.readFile(image) };
  if (image && typeof image.serverPath === 'string') return { path: image.serverPath };
  throw new TypeError('image must be a Buffer, a local file path, or {serverPath}');
}

function sha256File(filePath) {
  return new Promise((resolve, reject) => {
    const hash = crypto.createHash('sha256');
    fs.createReadStream(filePath)
      .on('data', (chunk) => hash.update(chunk))
      .on('error', reject)
      .on('end', () => resolve(hash.digest('hex')));
  });
}

const sleep = (ms) => new Promise((resolve) => { setTimeout(resolve, ms); });

class Sam3Client {
  /**
   * @param {string} target host:port
   * @param {object} [options]
   * @param {grpc.ChannelCredentials} [options.credentials] e.g. grpc.credentials.createSsl(ca)
   * @param {string} [options.token] sent as 'authorization: Bearer <token>'
   * @param {number|null} [options.timeoutMs] one deadline for every unary call (retries
   *   included) instead of the per-method defaults of DEFAULT_TIMEOUTS_MS; null: none.
   *   Streams (uploadVideo, propagate) only take a per-call timeoutMs.
   * @param {number} [options.maxAttempts=3] attempts of safe calls on UNAVAILABLE/RESOURCE_EXHAUSTED
   * @param {number} [options.maxMessageBytes=64 MiB]
   * @param {string} [options.protoRoot] directory holding sam3_grpc/v1/*.proto
   */
  constructor(target = 'localhost:50051', options = {}) {
    this.target = target;
    this.timeoutMs = options.timeoutMs;
    this.maxAttempts = options.maxAttempts || 3;
    // session id -> routing header value (ROUTING_HEADER) of each session this client opened.
    // Set an entry to follow a session opened elsewhere.
    this.routes = new Map();
    const api = loadApi(options.protoRoot);
    const credentials = options.credentials || grpc.credentials.createInsecure();
    const maxBytes = options.maxMessageBytes || 64 * MiB;
    const channelOptions = {
      'grpc.max_receive_message_length': maxBytes,
      'grpc.max_send_message_length': maxBytes,
    };
    this.segmentation = new api.v1.SegmentationService(target, credentials, channelOptions);
    const channelOverride = { channelOverride: this.segmentation.getChannel() };
    this.video = new api.v1.VideoService(target, credentials, { ...channelOptions, ...channelOverride });
    this.statusService = new api.v1.StatusService(target, credentials, { ...channelOptions, ...channelOverride });
    this.healthService = new api.health.Health(target, credentials, { ...channelOptions, ...channelOverride });
    this.metadata = new grpc.Metadata();
    if (options.token) this.metadata.set('authorization', `Bearer ${options.token}`);
  }

  close() {
    this.segmentation.close();
  }

  /** The call metadata: the token, and the session's routing header when it has one. */
  _metadataFor(sessionId) {
    const route = sessionId === undefined ? undefined : this.routes.get(sessionId);
    if (route === undefined) return this.metadata;
    const metadata = this.metadata.clone();
    metadata.set(ROUTING_HEADER, route);
    return metadata;
  }

  /** The session id when calls about it carry a routing header, else null. */
  _pinnedSession(sessionId) {
    return sessionId !== undefined && this.routes.has(sessionId) ? sessionId : null;
  }

  /**
   * A session from a reply: the routing header of that reply (a new session's, or a changed
   * one) is remembered, and the session carries the route it is pinned to (null: none).
   */
  _pinned(session, route) {
    if (route) this.routes.set(session.session_id, route);
    return { ...session, route: this.routes.get(session.session_id) || null };
  }

  _call(stub, method, request, { deadline, sessionId, onRoute }) {
    return new Promise((resolve, reject) => {
      const call = stub[method](request, this._metadataFor(sessionId), { deadline }, (error, response) => {
        if (error) reject(toSam3Error(error, this.target, this._pinnedSession(sessionId)));
        else resolve(response);
      });
      if (onRoute) call.on('metadata', (metadata) => onRoute(routeIn(metadata)));
    });
  }

  /**
   * A unary call within its deadline (DEFAULT_TIMEOUTS_MS unless the call or the client sets
   * one); safe ones are retried on UNAVAILABLE/RESOURCE_EXHAUSTED within that deadline,
   * waiting the server's RetryInfo delay when it sent one. sessionId: the session the call is
   * about (its routing header is sent). onRoute(route): the reply's routing header.
   */
  async _unary(stub, method, request, {
    safe = false, timeoutMs, sessionId, onRoute,
  } = {}) {
    const deadline = deadlineAfter(timeoutFor(method, timeoutMs, this.timeoutMs));
    for (let attempt = 1; ; attempt += 1) {
      try {
        // eslint-disable-next-line no-await-in-loop
        return await this._call(stub, method, request, { deadline, sessionId, onRoute });
      } catch (error) {
        const last = !safe || attempt >= this.maxAttempts || !RETRYABLE.has(error.code)
          || error.reason === 'REPLICA_LOST';
        const delay = error.retryAfterMs !== null && error.retryAfterMs !== undefined
          ? error.retryAfterMs
          : 200 * 2 ** (attempt - 1) * (0.8 + 0.4 * Math.random());
        if (last || Date.now() + delay >= deadline) throw error;
        // eslint-disable-next-line no-await-in-loop
        await sleep(delay);
      }
    }
  }

  /** A unary call about one session whose reply holds that session ({session}). */
  async _sessionCall(method, sessionId, request, options) {
    let route = null;
    const response = await this._unary(this.video, method, request, {
      ...options, sessionId, onRoute: (value) => { route = value; },
    });
    return this._pinned(response.session, route);
  }

  /**
   * Segments one image. image: Buffer | local path | {serverPath}. prompts: a string, a
   * prompt object, or an array of them. options: maskEncoding ('rle'|'png'|'none'),
   * includePolygons, polygonTolerancePixels, scoreThreshold, minAreaPixels, maxDetections, timeoutMs.
   */
  async segmentImage(image, prompts, options = {}) {
    const list = Array.isArray(prompts) ? prompts : [prompts];
    const request = { image: await toImage(image), prompts: list.map(toPrompt), output: toOutput(options) };
    return this._unary(this.segmentation, 'SegmentImage', request, { safe: true, timeoutMs: options.timeoutMs });
  }

  /**
   * Opens a session on a video inside the server's media root. Resolves to a Session
   * ({session_id, video, ..., route}).
   */
  startSession(videoPath, { timeoutMs } = {}) {
    return this._sessionCall('StartSession', undefined, { video_path: videoPath }, { timeoutMs });
  }

  /**
   * Streams a local video file and opens a session on it. Never retried.
   * options: chunkSize (1 MiB), sha256 (true: computed first; a hex string; or false),
   * onProgress(sentBytes, totalBytes), timeoutMs (default: none).
   */
  async uploadVideo(filePath, options = {}) {
    const chunkSize = options.chunkSize || MiB;
    const { size } = await fs.promises.stat(filePath);
    let digest = '';
    if (options.sha256 === undefined || options.sha256 === true) digest = await sha256File(filePath);
    else if (typeof options.sha256 === 'string') digest = options.sha256.toLowerCase();
    const deadline = deadlineAfter(timeoutFor('UploadVideo', options.timeoutMs, undefined));
    let call;
    let route = null;
    const done = new Promise((resolve, reject) => {
      call = this.video.UploadVideo(this.metadata, { deadline }, (error, response) => {
        if (error) reject(toSam3Error(error, this.target));
        else resolve(response);
      });
    });
    call.on('metadata', (metadata) => { route = routeIn(metadata); });
    const send = async () => {
      call.write({ metadata: { filename: path.basename(filePath), size_bytes: size, sha256: digest } });
      let sent = 0;
      const stream = size > 0 ? fs.createReadStream(filePath, { highWaterMark: chunkSize, end: size - 1 }) : [];
      for await (const chunk of stream) {
        if (!call.write({ chunk })) await once(call, 'drain');
        sent += chunk.length;
        if (options.onProgress) options.onProgress(sent, size);
      }
      call.end();
    };
    const sending = send().catch((error) => {
      call.cancel();
      throw error;
    });
    const [response] = await Promise.all([done, sending]);
    return this._pinned(response.session, route);
  }

  /** Adds a prompt on a frame; options: objectId (refine an object), output options, timeoutMs. */
  addPrompt(sessionId, frameIndex, prompt, options = {}) {
    const request = { session_id: sessionId, frame_index: frameIndex, prompt: toPrompt(prompt), output: toOutput(options) };
    if (options.objectId !== undefined && options.objectId !== null) request.object_id = options.objectId;
    return this._unary(this.video, 'AddPrompt', request, { timeoutMs: options.timeoutMs, sessionId });
  }

  removeObject(sessionId, objectId, { timeoutMs } = {}) {
    return this._sessionCall('RemoveObject', sessionId, { session_id: sessionId, object_id: objectId }, { timeoutMs });
  }

  resetSession(sessionId, { timeoutMs } = {}) {
    return this._sessionCall('ResetSession', sessionId, { session_id: sessionId }, { safe: true, timeoutMs });
  }

  /**
   * Tracks every object through the video: an async iterator of PropagateResponse
   * ({frame, frames_done, frames_total}). Breaking out of `for await` cancels the stream.
   * options: direction ('forward'|'backward'|'both'), startFrameIndex, maxFrames, output
   * options, timeoutMs (default: none).
   */
  async* propagate(sessionId, options = {}) {
    const request = {
      session_id: sessionId,
      direction: `PROPAGATION_DIRECTION_${(options.direction || 'forward').toUpperCase()}`,
      max_frames: options.maxFrames || 0,
      output: toOutput(options),
    };
    if (options.startFrameIndex !== undefined && options.startFrameIndex !== null) {
      request.start_frame_index = options.startFrameIndex;
    }
    const deadline = deadlineAfter(timeoutFor('Propagate', options.timeoutMs, undefined));
    const call = this.video.Propagate(request, this._metadataFor(sessionId), { deadline });
    let finished = false;
    try {
      for await (const response of call) yield response;
      finished = true;
    } catch (error) {
      finished = true;
      throw toSam3Error(error, this.target, this._pinnedSession(sessionId));
    } finally {
      if (!finished) {
        call.on('error', () => {}); // the CANCELLED status that follows is expected
        call.cancel();
      }
    }
  }

  getSession(sessionId, { timeoutMs } = {}) {
    return this._sessionCall('GetSession', sessionId, { session_id: sessionId }, { safe: true, timeoutMs });
  }

  /** Every open session on the server; those this client opened carry their route. */
  async listSessions({ timeoutMs } = {}) {
    const response = await this._unary(this.video, 'ListSessions', {}, { safe: true, timeoutMs });
    return response.sessions.map((session) => this._pinned(session, null));
  }

  /**
   * Closes a session; resolves to false when it was already closed. The session's route is
   * forgotten once the server has answered (or says the session does not exist).
   */
  async closeSession(sessionId, { timeoutMs } = {}) {
    try {
      const response = await this._unary(this.video, 'CloseSession', { session_id: sessionId }, { safe: true, timeoutMs, sessionId });
      this.routes.delete(sessionId);
      return response.closed;
    } catch (error) {
      if (error.code === grpc.status.NOT_FOUND) this.routes.delete(sessionId);
      throw error;
    }
  }

  /**
   * Runs fn(session) on a new session and always closes it. source: {upload: localPath,
   * ...uploadOptions} or {videoPath: 'path/on/server'}.
   */
  async withSession(source, fn) {
    const session = source.upload
      ? await this.uploadVideo(source.upload, source)
      : await this.startSession(source.videoPath);
    try {
      return await fn(session);
    } finally {
      await this.closeSession(session.session_id).catch(() => {});
    }
  }

  status({ timeoutMs } = {}) {
    return this._unary(this.statusService, 'GetServerStatus', {}, { safe: true, timeoutMs });
  }

  /** 'SERVING' | 'NOT_SERVING' | 'SERVICE_UNKNOWN' | 'UNKNOWN' */
  async health(service = '', { timeoutMs } = {}) {
    try {
      const response = await this._unary(this.healthService, 'Check', { service }, { safe: true, timeoutMs });
      return response.status;
    } catch (error) {
      if (error.code === grpc.status.NOT_FOUND) return 'SERVICE_UNKNOWN';
      throw error;
    }
  }
}

module.exports = {
  Sam3Client,
  Sam3Error,
  decodeRle,
  loadApi,
  grpc,
  DEFAULT_TIMEOUTS_MS,
  ROUTING_HEADER,
  timeoutFor,
};
