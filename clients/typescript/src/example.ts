/**
 * sam3-grpc from TypeScript, with stubs generated from protos/ by `buf generate` (buf.gen.yaml
 * at the repository root: ts-proto with @grpc/grpc-js service clients). Segments one image and
 * prints the detections as JSON; a failed call prints its status with the machine-readable
 * google.rpc.ErrorInfo reason, the BadRequest field violations and the RetryInfo delay, decoded
 * with types generated from googleapis' google/rpc protos.
 *
 *   npm run build && node dist/example.js localhost:50051 photo.jpg "a dog" point:120,80
 *
 * A prompt "point:X,Y" is a click at pixel (X, Y); any other prompt is text.
 */
import { readFileSync } from "node:fs";

import { credentials, Metadata, status, type ServiceError } from "@grpc/grpc-js";

import { BadRequest, ErrorInfo, RetryInfo } from "./gen/google/rpc/error_details";
import { Status } from "./gen/google/rpc/status";
import { MaskEncoding, PromptLabel, type Prompt } from "./gen/sam3_grpc/v1/common";
import { ErrorReason, errorReasonFromJSON } from "./gen/sam3_grpc/v1/error_reason";
import {
  SegmentationServiceClient,
  SegmentImageRequest,
  type SegmentImageResponse,
} from "./gen/sam3_grpc/v1/segmentation_service";

/** Why a call failed, from the server's rich google.rpc.Status. */
export interface CallFailure {
  code: string;
  message: string;
  /** The ErrorInfo reason as the generated enum; UNRECOGNIZED for a reason newer than these stubs. */
  reason: ErrorReason | null;
  reasonName: string | null;
  metadata: Record<string, string>;
  fieldViolations: { field: string; description: string }[];
  retryAfterMs: number | null;
}

const DETAIL_TYPE_PREFIX = "type.googleapis.com/";

/** Decodes the grpc-status-details-bin trailer that every sam3-grpc error carries. */
export function describeFailure(error: ServiceError): CallFailure {
  const failure: CallFailure = {
    code: status[error.code],
    message: error.details,
    reason: null,
    reasonName: null,
    metadata: {},
    fieldViolations: [],
    retryAfterMs: null,
  };
  const [raw] = error.metadata.get("grpc-status-details-bin");
  if (!(raw instanceof Buffer)) return failure; // not from a sam3-grpc server (e.g. unreachable)
  const rich = Status.decode(raw);
  failure.message = rich.message;
  for (const detail of rich.details) {
    switch (detail.typeUrl.slice(DETAIL_TYPE_PREFIX.length)) {
      case "google.rpc.ErrorInfo": {
        const info = ErrorInfo.decode(detail.value);
        failure.reasonName = info.reason;
        failure.reason = errorReasonFromJSON(`ERROR_REASON_${info.reason}`);
        failure.metadata = info.metadata;
        break;
      }
      case "google.rpc.BadRequest":
        failure.fieldViolations = BadRequest.decode(detail.value).fieldViolations.map(
          ({ field, description }) => ({ field, description }),
        );
        break;
      case "google.rpc.RetryInfo": {
        const delay = RetryInfo.decode(detail.value).retryDelay;
        if (delay) failure.retryAfterMs = delay.seconds * 1000 + delay.nanos / 1e6;
        break;
      }
      default: // a detail this program does not use
    }
  }
  return failure;
}

function toPrompt(argument: string): Partial<Prompt> {
  const click = /^point:(-?[\d.]+),(-?[\d.]+)$/.exec(argument);
  if (click === null) return { text: argument };
  return { points: [{ point: { x: Number(click[1]), y: Number(click[2]) }, label: PromptLabel.PROMPT_LABEL_POSITIVE }] };
}

function segment(
  client: SegmentationServiceClient,
  request: SegmentImageRequest,
): Promise<SegmentImageResponse> {
  // The Python and Node.js clients' default deadline for SegmentImage.
  const deadline = Date.now() + 300_000;
  return new Promise((resolve, reject) => {
    client.segmentImage(request, new Metadata(), { deadline }, (error, response) => {
      if (error) reject(error);
      else resolve(response);
    });
  });
}

async function main(argv: string[]): Promise<number> {
  const [server, imagePath, ...prompts] = argv;
  if (!server || !imagePath || prompts.length === 0) {
    process.stderr.write("usage: node dist/example.js HOST:PORT IMAGE PROMPT [PROMPT...]\n");
    return 2;
  }
  const client = new SegmentationServiceClient(server, credentials.createInsecure());
  const request = SegmentImageRequest.fromPartial({
    image: { content: readFileSync(imagePath) },
    prompts: prompts.map(toPrompt),
    output: { maskEncoding: MaskEncoding.MASK_ENCODING_RLE },
  });
  try {
    const response = await segment(client, request);
    const results = response.results.map((result) => ({
      prompt: prompts[result.promptIndex],
      detections: result.detections.map((d) => ({
        objectId: d.objectId,
        score: d.score,
        box: d.box ? [d.box.xMin, d.box.yMin, d.box.xMax, d.box.yMax] : null,
        areaPixels: d.areaPixels,
        rleCounts: d.mask?.rleCounts ?? null,
      })),
    }));
    console.log(JSON.stringify({ width: response.width, height: response.height, results }));
    return 0;
  } catch (error) {
    const failure = describeFailure(error as ServiceError);
    console.log(JSON.stringify({ error: failure }));
    if (failure.reason === ErrorReason.ERROR_REASON_QUEUE_FULL) {
      process.stderr.write(`server busy: retry in ${failure.retryAfterMs} ms\n`);
    }
    return 1;
  } finally {
    client.close();
  }
}

main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
});
