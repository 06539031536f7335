'use strict';
/**
 * Node.js client of sam3-grpc, built on @grpc/grpc-js and @grpc/proto-loader.
 *
 * Unary calls return promises; propagate() is an async iterator (break out of the loop to
 * cancel the stream); uploadVideo() streams a file from disk in chunks. Messages use the
 * field names of the .proto files (snake_case); enums are strings; 64-bit integers are
 * Numbers; bytes are Buffers. Failed calls reject with a Sam3Error carrying the status code,
 * the server's message and, when the server sent a google.rpc.RetryInfo, retryAfterMs.
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
  longs: Number, // uint64 sizes and counts fit a double comfortably
  enums: String,
  defaults: true,
  oneofs: true, // e.g. mask.data === 'rle_counts' | 'png'
};
const MiB = 1024 * 1024;
const RETRYABLE = new Set([grpc.status.UNAVAILABLE, grpc.status.RESOURCE_EXHAUSTED]);

// google.rpc.Status and RetryInfo, to read the rich error details the server sends.
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
          },
        },
      },
    },
  },
});
const StatusMessage = richStatus.lookupType('google.rpc.Status');
const RetryInfoMessage = richStatus.lookupType('google.rpc.RetryInfo');

const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

/** A failed call: code (number), codeName ('NOT_FOUND'...), details, retryAfterMs or null. */
class Sam3Error extends Error {
  constructor(code, details, retryAfterMs = null, target = '') {
    super(`${CODE_NAMES[code] || code}: ${details}`);
    this.name = 'Sam3Error';
    this.code = code;
    this.codeName = CODE_NAMES[code] || String(code);
    this.details = details;
    this.retryAfterMs = retryAfterMs;
    this.target = target;
  }
}

function toSam3Error(error, target) {
  if (error instanceof Sam3Error || error.code === undefined) return error;
  let retryAfterMs = null;
  let details = error.details || CODE_NAMES[error.code] || 'error';
  const raw = error.metadata && error.metadata.get('grpc-status-details-bin');
  if (raw && raw.length) {
    try {
      const status = StatusMessage.decode(raw[0]);
      if (status.message) details = status.message;
      for (const any of status.details) {
        if (any.type_url.endsWith('/google.rpc.RetryInfo')) {
          const delay = RetryInfoMessage.decode(any.value).retry_delay || {};
          retryAfterMs = Number(delay.seconds || 0) * 1000 + (delay.nanos || 0) / 1e6;
        }
      }
    } catch (_) {
      // A malformed detail leaves the plain status.
    }
  }
  return new Sam3Error(error.code, details, retryAfterMs, target);
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
 * Decodes a COCO compressed RLE counts string into a row-major Uint8Array of height*width
 * (1 inside the mask), the same as pycocotools' mask.decode.
 */
function decodeRle(counts, height, width) {
  const runs = [];
  let p = 0;
  while (p < counts.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = counts.charCodeAt(p) - 48;
      x += (c & 0x1f) * 2 ** (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x -= 2 ** (5 * k);
    }
    if (runs.length > 2) x += runs[runs.length - 2];
    runs.push(x);
  }
  const mask = new Uint8Array(height * width);
  let index = 0; // column-major position
  runs.forEach((run, i) => {
    if (i % 2 === 1) {
      for (let j = index; j < index + run; j += 1) {
        mask[(j % height) * width + Math.floor(j / height)] = 1;
      }
    }
    index += run;
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
   * @param {number} [options.timeoutMs=30000] deadline of unary calls (retries included)
   * @param {number} [options.maxAttempts=3] attempts of safe calls on UNAVAILABLE/RESOURCE_EXHAUSTED
   * @param {number} [options.maxMessageBytes=64 MiB]
   * @param {string} [options.protoRoot] directory holding sam3_grpc/v1/*.proto
   */
  constructor(target = 'localhost:50051', options = {}) {
    this.target = target;
    this.timeoutMs = options.timeoutMs === undefined ? 30000 : options.timeoutMs;
    this.maxAttempts = options.maxAttempts || 3;
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

  _deadline(timeoutMs) {
    const ms = timeoutMs === undefined ? this.timeoutMs : timeoutMs;
    return ms ? Date.now() + ms : Infinity;
  }

  _call(stub, method, request, deadline) {
    return new Promise((resolve, reject) => {
      stub[method](request, this.metadata, { deadline }, (error, response) => {
        if (error) reject(toSam3Error(error, this.target));
        else resolve(response);
      });
    });
  }

  /** A unary call; safe ones are retried on UNAVAILABLE/RESOURCE_EXHAUSTED within the deadline,
   * waiting the server's RetryInfo delay when it sent one. */
  async _unary(stub, method, request, { safe = false, timeoutMs } = {}) {
    const deadline = this._deadline(timeoutMs);
    for (let attempt = 1; ; attempt += 1) {
      try {
        // eslint-disable-next-line no-await-in-loop
        return await this._call(stub, method, request, deadline);
      } catch (error) {
        const last = !safe || attempt >= this.maxAttempts || !RETRYABLE.has(error.code);
        const delay = error.retryAfterMs !== null && error.retryAfterMs !== undefined
          ? error.retryAfterMs
          : 200 * 2 ** (attempt - 1) * (0.8 + 0.4 * Math.random());
        if (last || Date.now() + delay >= deadline) throw error;
        // eslint-disable-next-line no-await-in-loop
        await sleep(delay);
      }
    }
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

  /** Opens a session on a video inside the server's media root. Resolves to a Session. */
  async startSession(videoPath, { timeoutMs } = {}) {
    const response = await this._unary(this.video, 'StartSession', { video_path: videoPath }, { timeoutMs });
    return response.session;
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
    const deadline = options.timeoutMs ? Date.now() + options.timeoutMs : Infinity;
    let call;
    const done = new Promise((resolve, reject) => {
      call = this.video.UploadVideo(this.metadata, { deadline }, (error, response) => {
        if (error) reject(toSam3Error(error, this.target));
        else resolve(response);
      });
    });
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
    return response.session;
  }

  /** Adds a prompt on a frame; options: objectId (refine an object), output options. */
  addPrompt(sessionId, frameIndex, prompt, options = {}) {
    const request = { session_id: sessionId, frame_index: frameIndex, prompt: toPrompt(prompt), output: toOutput(options) };
    if (options.objectId !== undefined && options.objectId !== null) request.object_id = options.objectId;
    return this._unary(this.video, 'AddPrompt', request, { timeoutMs: options.timeoutMs });
  }

  async removeObject(sessionId, objectId, { timeoutMs } = {}) {
    const response = await this._unary(this.video, 'RemoveObject', { session_id: sessionId, object_id: objectId }, { timeoutMs });
    return response.session;
  }

  async resetSession(sessionId, { timeoutMs } = {}) {
    const response = await this._unary(this.video, 'ResetSession', { session_id: sessionId }, { safe: true, timeoutMs });
    return response.session;
  }

  /**
   * Tracks every object through the video: an async iterator of PropagateResponse
   * ({frame, frames_done, frames_total}). Breaking out of `for await` cancels the stream.
   * options: direction ('forward'|'backward'|'both'), startFrameIndex, maxFrames, output options.
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
    const deadline = options.timeoutMs ? Date.now() + options.timeoutMs : Infinity;
    const call = this.video.Propagate(request, this.metadata, { deadline });
    let finished = false;
    try {
      for await (const response of call) yield response;
      finished = true;
    } catch (error) {
      finished = true;
      throw toSam3Error(error, this.target);
    } finally {
      if (!finished) {
        call.on('error', () => {}); // the CANCELLED status that follows is expected
        call.cancel();
      }
    }
  }

  async getSession(sessionId, { timeoutMs } = {}) {
    const response = await this._unary(this.video, 'GetSession', { session_id: sessionId }, { safe: true, timeoutMs });
    return response.session;
  }

  async listSessions({ timeoutMs } = {}) {
    const response = await this._unary(this.video, 'ListSessions', {}, { safe: true, timeoutMs });
    return response.sessions;
  }

  /** Closes a session; resolves to false when it was already closed. */
  async closeSession(sessionId, { timeoutMs } = {}) {
    const response = await this._unary(this.video, 'CloseSession', { session_id: sessionId }, { safe: true, timeoutMs });
    return response.closed;
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
  Sam3Client, Sam3Error, decodeRle, loadApi, grpc,
};
