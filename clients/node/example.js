#!/usr/bin/env node
'use strict';
/**
 * Example: segment an image and, given a video, upload it, prompt on a frame and stream the
 * propagation.
 *
 *   node example.js --server localhost:50051 --image photo.jpg --prompt "a dog"
 *   node example.js --image photo.jpg --prompt red --video clip.mp4 --frame 0 --json
 *
 * --json prints one JSON document (used by the tests); otherwise a readable summary.
 */

const { parseArgs } = require('node:util');
const fs = require('node:fs');

const { Sam3Client, decodeRle, grpc } = require('./client');

function usage(message) {
  process.stderr.write(`example.js: ${message}\n`);
  process.stderr.write('usage: node example.js [--server HOST:PORT] [--token T] [--tls-ca PEM] '
    + '--prompt TEXT [--prompt TEXT...] [--image FILE] [--video FILE [--frame N] '
    + '[--direction forward|backward|both]] [--json]\n');
  process.exit(2);
}

function summarise(detection) {
  const { mask } = detection;
  let maskArea = null;
  if (mask && mask.data === 'rle_counts') {
    maskArea = decodeRle(mask.rle_counts, mask.height, mask.width).reduce((a, b) => a + b, 0);
  }
  const b = detection.box;
  return {
    object_id: detection.object_id,
    score: Number(detection.score.toFixed(4)),
    box: [b.x_min, b.y_min, b.x_max, b.y_max],
    area: detection.area_pixels,
    mask_area: maskArea,
  };
}

async function main() {
  let args;
  try {
    ({ values: args } = parseArgs({
      options: {
        server: { type: 'string', default: process.env.SAM3_GRPC_SERVER || 'localhost:50051' },
        token: { type: 'string', default: process.env.SAM3_GRPC_TOKEN },
        'tls-ca': { type: 'string' },
        image: { type: 'string' },
        video: { type: 'string' },
        prompt: { type: 'string', multiple: true, default: [] },
        frame: { type: 'string', default: '0' },
        direction: { type: 'string', default: 'forward' },
        json: { type: 'boolean', default: false },
      },
    }));
  } catch (error) {
    usage(error.message);
  }
  if (!args.prompt.length) usage('give at least one --prompt');
  if (!args.image && !args.video) usage('give --image and/or --video');
  for (const file of [args.image, args.video, args['tls-ca']]) {
    if (file && !fs.existsSync(file)) usage(`${file} does not exist`);
  }

  const credentials = args['tls-ca']
    ? grpc.credentials.createSsl(fs.readFileSync(args['tls-ca']))
    : undefined;
  const client = new Sam3Client(args.server, { token: args.token, credentials });
  const log = args.json ? () => {} : (line) => console.log(line);
  const report = { server: args.server, health: await client.health() };
  log(`${args.server}: ${report.health}`);

  try {
    if (args.image) {
      const response = await client.segmentImage(args.image, args.prompt);
      report.image = {
        width: response.width,
        height: response.height,
        cache_hit: response.cache_hit,
        results: response.results.map((result) => ({
          prompt: args.prompt[result.prompt_index],
          detections: result.detections.map(summarise),
        })),
      };
      log(`image ${response.width}x${response.height}`);
      for (const result of report.image.results) {
        log(`  ${result.prompt}: ${result.detections.length} detection(s)`);
        for (const d of result.detections) log(`    #${d.object_id} score ${d.score} box [${d.box}] area ${d.area}`);
      }
    }

    if (args.video) {
      const frameIndex = Number(args.frame);
      let uploaded = 0;
      const video = {};
      await client.withSession({ upload: args.video, onProgress: (sent) => { uploaded = sent; } }, async (session) => {
        video.session_id = session.session_id;
        video.route = session.route; // the replica pin behind Envoy, null without a proxy
        video.frame_count = session.video.frame_count;
        video.uploaded_bytes = uploaded;
        log(`session ${session.session_id}: ${session.video.frame_count} frames `
          + `${session.video.width}x${session.video.height} (${uploaded} bytes uploaded)`);
        video.prompts = [];
        for (const prompt of args.prompt) {
          // eslint-disable-next-line no-await-in-loop
          const added = await client.addPrompt(session.session_id, frameIndex, prompt);
          video.prompts.push({ prompt, object_ids: added.object_ids, objects: added.frame.objects.map(summarise) });
          log(`  "${prompt}" on frame ${frameIndex}: objects ${added.object_ids.join(', ') || 'none'}`);
        }
        video.frames = [];
        for await (const message of client.propagate(session.session_id, { direction: args.direction })) {
          video.frames_total = message.frames_total;
          video.frames.push({
            frame_index: message.frame.frame_index,
            frames_done: message.frames_done,
            objects: message.frame.objects.map(summarise),
          });
          log(`  frame ${message.frame.frame_index} (${message.frames_done}/${message.frames_total}): `
            + message.frame.objects.map((o) => `#${o.object_id} [${o.box.x_min},${o.box.y_min},${o.box.x_max},${o.box.y_max}]`).join(' '));
        }
      });
      video.open_sessions_after = (await client.listSessions()).length;
      report.video = video;
    }
  } finally {
    client.close();
  }
  if (args.json) console.log(JSON.stringify(report));
}

main().catch((error) => {
  // A Sam3Error names why (error.reason) and, for a bad request, the offending fields.
  const why = error.reason ? ` [${error.reason}]` : '';
  process.stderr.write(`example.js: ${error.message}${why}\n`);
  for (const { field, description } of error.fieldViolations || []) {
    process.stderr.write(`  ${field}: ${description}\n`);
  }
  process.exit(1);
});
