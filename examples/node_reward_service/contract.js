// The rpp reward contract (proto/rpp/reward/v1/reward.proto, version 1.1) in Node.js:
// loading the .proto, validating requests, splitting steps into UTF-8 byte spans, health,
// reflection, a bearer token and a busy limit. outcome.js and process.js each add a
// scoring function and start a server with serve().
//
// Everything here follows the .proto's rules; the comments name the rule.
'use strict';

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const { HealthImplementation } = require('grpc-health-check');
const { ReflectionService } = require('@grpc/reflection');
const descriptor = require('protobufjs/ext/descriptor');

const PROTO_ROOT = path.resolve(__dirname, '../../proto');
const PROTO_FILE = 'rpp/reward/v1/reward.proto'; // reflection serves it under this path
const SERVICE_NAME = 'rpp.reward.v1.RewardService';
const MAX_SAMPLES = 256;
const MAX_REQUEST_BYTES = 4 * 1024 * 1024; // grpc-js's default receive limit, stated
const MAX_SAMPLE_BYTES = 1024 * 1024;
const MAX_CONCURRENT_CALLS = 64;

const packageDefinition = protoLoader.loadSync(PROTO_FILE, {
  includeDirs: [PROTO_ROOT], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
});
const proto = grpc.loadPackageDefinition(packageDefinition).rpp.reward.v1;

// protobufjs names each file after its package ("rpp_reward_v1.proto"); reflection clients
// (grpcurl, rpp-reward-conformance) ask for the contract's path, so reflection gets
// descriptors renamed to it.
function withContractFileName(definition) {
  const renamed = {};
  for (const [name, type] of Object.entries(definition)) {
    const files = Array.isArray(type.fileDescriptorProtos) ? type.fileDescriptorProtos.map((bytes) => {
      const file = descriptor.FileDescriptorProto.decode(bytes);
      if (file.package !== 'rpp.reward.v1') return bytes;
      file.name = PROTO_FILE;
      return Buffer.from(descriptor.FileDescriptorProto.encode(file).finish());
    }) : type.fileDescriptorProtos;
    renamed[name] = { ...type, fileDescriptorProtos: files };
  }
  return renamed;
}

class InvalidRequest extends Error {}

// Whitespace is exactly Python's str.isspace() (the .proto lists it); JavaScript's \s
// differs (it has U+FEFF, lacks U+001C-U+001F and U+0085), so it is spelt out here.
const SPACE = '\\t\\n\\u000b\\u000c\\r\\u001c-\\u001f \\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const VISIBLE = new RegExp(`[^${SPACE}](?:[\\s\\S]*[^${SPACE}])?`, 'u');

// Spans are BYTE offsets into the UTF-8 encoding of the response, never string indices:
// JavaScript strings count UTF-16 units, which differ as soon as the text is not ASCII.
function byteLength(text) {
  return Buffer.byteLength(text, 'utf8');
}

// The .proto's splitting algorithm: cut at every occurrence of the literal separator,
// trim whitespace from each piece, drop empty pieces; spans of what is left, in bytes.
function splitSteps(response, separator) {
  const spans = [];
  let offset = 0; // byte offset of the current piece
  for (const piece of response.split(separator)) {
    const visible = VISIBLE.exec(piece);
    if (visible) {
      const start = offset + byteLength(piece.slice(0, visible.index));
      spans.push({ start, end: start + byteLength(visible[0]) });
    }
    offset += byteLength(piece) + byteLength(separator);
  }
  return spans;
}

function isContinuationByte(bytes, at) {
  return at < bytes.length && (bytes[at] & 0xc0) === 0x80;
}

// Given spans must be in range, on character boundaries, non-empty, sorted and disjoint.
function checkSpans(sample, where) {
  const bytes = Buffer.from(sample.response, 'utf8');
  let previousEnd = 0;
  sample.steps.forEach((span, j) => {
    const at = `${where}.steps[${j}]: span [${span.start}, ${span.end})`;
    if (span.start >= span.end) throw new InvalidRequest(`${at} is empty or reversed`);
    if (span.end > bytes.length) throw new InvalidRequest(`${at} is out of range (${bytes.length} bytes; spans count UTF-8 bytes)`);
    if (span.start < previousEnd) throw new InvalidRequest(`${at} overlaps the previous step`);
    if (isContinuationByte(bytes, span.start) || isContinuationByte(bytes, span.end)) {
      throw new InvalidRequest(`${at} cuts a multi-byte UTF-8 character`);
    }
    previousEnd = span.end;
  });
}

// Whole-request problems fail the call with INVALID_ARGUMENT, naming the sample.
function validate(samples, kind) {
  if (samples.length === 0) throw new InvalidRequest('samples: the request has no samples');
  if (samples.length > MAX_SAMPLES) throw new InvalidRequest(`samples: ${samples.length} exceed the limit of ${MAX_SAMPLES}`);
  const seen = new Map();
  samples.forEach((sample, i) => {
    const where = `samples[${i}] (id ${JSON.stringify(sample.id)})`;
    if (!sample.id) throw new InvalidRequest(`samples[${i}].id: missing`);
    if (seen.has(sample.id)) throw new InvalidRequest(`${where}: duplicates samples[${seen.get(sample.id)}].id`);
    seen.set(sample.id, i);
    if (kind === 'process') checkSpans(sample, where); // OUTCOME services ignore steps
  });
}

function sampleBytes(sample) {
  return byteLength(sample.prompt) + byteLength(sample.response) + byteLength(sample.reference || '');
}

// kind: 'outcome' | 'process'. score(sample, steps) returns a number (outcome) or one number
// per step (process), steps being [{start, end, text}]; it may throw for one sample.
function serve({ kind, modelName, score, separator = '\n\n', port = 0, token = process.env.RPP_TOKEN }) {
  let inFlight = 0;

  function scoreOne(sample) {
    const size = sampleBytes(sample);
    if (size > MAX_SAMPLE_BYTES) { // a per-sample error; the call still succeeds
      return { id: sample.id, error: { code: 'INVALID_SAMPLE', message: `${sample.id}: ${size} bytes, over ${MAX_SAMPLE_BYTES}` } };
    }
    try {
      if (kind === 'outcome') {
        const outcome = score(sample, []);
        if (!Number.isFinite(outcome)) throw new Error(`score ${outcome} is not a finite number`);
        return { id: sample.id, outcome };
      }
      const bytes = Buffer.from(sample.response, 'utf8');
      const spans = sample.steps.length ? sample.steps : splitSteps(sample.response, separator);
      const steps = spans.map(({ start, end }) => ({ start, end, text: bytes.subarray(start, end).toString('utf8') }));
      const scores = score(sample, steps);
      if (scores.length !== steps.length || !scores.every(Number.isFinite)) throw new Error(`${scores.length} scores for ${steps.length} steps`);
      return { id: sample.id, steps: steps.map(({ start, end }, j) => ({ span: { start, end }, score: scores[j] })) };
    } catch (err) {
      return { id: sample.id, error: { code: 'SCORER_FAILED', message: `${sample.id}: ${err.message}` } };
    }
  }

  const service = {
    GetInfo(call, callback) {
      callback(null, {
        kind: kind === 'outcome' ? 'REWARD_KIND_OUTCOME' : 'REWARD_KIND_PROCESS',
        model_name: modelName,
        step_separator: kind === 'process' ? separator : '',
        max_samples_per_request: MAX_SAMPLES,
        max_request_bytes: MAX_REQUEST_BYTES,
        max_sample_bytes: MAX_SAMPLE_BYTES,
        version: 'rpp-node-reward-service 1.0.0',
        contract_version: '1.1',
      });
    },
    Score(call, callback) {
      if (token && call.metadata.get('authorization')[0] !== `Bearer ${token}`) {
        return callback({ code: grpc.status.UNAUTHENTICATED, details: 'send "authorization: Bearer <token>" metadata' });
      }
      if (inFlight >= MAX_CONCURRENT_CALLS) { // busy: RESOURCE_EXHAUSTED with gRPC's pushback trailer
        const trailer = new grpc.Metadata();
        trailer.set('grpc-retry-pushback-ms', '50');
        return callback({ code: grpc.status.RESOURCE_EXHAUSTED, details: 'busy, retry', metadata: trailer });
      }
      const samples = call.request.samples;
      try {
        validate(samples, kind);
      } catch (err) {
        if (err instanceof InvalidRequest) return callback({ code: grpc.status.INVALID_ARGUMENT, details: err.message });
        throw err;
      }
      inFlight += 1;
      try {
        callback(null, { results: samples.map(scoreOne) }); // one result per sample, in order
      } finally {
        inFlight -= 1;
      }
    },
  };

  const server = new grpc.Server({ 'grpc.max_receive_message_length': MAX_REQUEST_BYTES });
  server.addService(proto.RewardService.service, service);
  const health = new HealthImplementation({ '': 'SERVING', [SERVICE_NAME]: 'SERVING' }); // both names
  health.addToServer(server);
  new ReflectionService(withContractFileName(packageDefinition)).addToServer(server); // v1 and v1alpha
  server.bindAsync(`127.0.0.1:${port}`, grpc.ServerCredentials.createInsecure(), (err, boundPort) => {
    if (err) throw err;
    console.log(`rpp ${kind} reward service (${modelName}) listening on 127.0.0.1:${boundPort}`);
  });
  const stop = () => {
    health.setStatus('', 'NOT_SERVING');
    health.setStatus(SERVICE_NAME, 'NOT_SERVING');
    server.tryShutdown(() => process.exit(0));
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  return server;
}

function portFromArgs() {
  const i = process.argv.indexOf('--port');
  return i >= 0 ? Number(process.argv[i + 1]) : 0;
}

module.exports = { serve, splitSteps, portFromArgs };
