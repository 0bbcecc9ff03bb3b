#!/usr/bin/env node
// Benchmark driver: the reference tus server (@tus/server) with @tus/s3-store, so
// scripts/bench-s3.sh can put ferry's S3 store beside it on the same S3 service.
//
//   node tus_node_s3_server.mjs --port 0 --endpoint URL --bucket BUCKET [--path /files]
//        [--part-size BYTES]
//
// Listens on 127.0.0.1 only. Once bound it prints, on stdout,
//   listening on http://127.0.0.1:PORT
// (the creation endpoint is then http://127.0.0.1:PORT<path>).
// Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; the region from
// AWS_REGION (default us-east-1). Requests are path-style (http://host/BUCKET/KEY), as an
// S3-compatible store on 127.0.0.1 needs. @tus/s3-store keeps each upload as the object
// <id> (a multipart upload until it finishes), its info as <id>.info, and bytes short of a
// part between requests as <id>.part. --part-size is @tus/s3-store's preferred part size
// (its default, 8 MiB, when not given).
// stderr gets `created <id>` / `finished <id> <size>` lines, and an `error-response STATUS
// ...` line for every error answer.
// Exits when its stdin closes (so a harness that dies never leaves it orphaned), and on
// SIGTERM/SIGINT.
import { parseArgs } from 'node:util'
import { S3Store } from '@tus/s3-store'
import { EVENTS, Server } from '@tus/server'

const USAGE =
  'usage: node tus_node_s3_server.mjs --port PORT --endpoint URL --bucket BUCKET [--path /files] [--part-size BYTES]'
function usage(msg) {
  if (msg) process.stderr.write(`error: ${msg}\n`)
  process.stderr.write(`${USAGE}\n`)
  process.exit(2)
}

let args
try {
  ;({ values: args } = parseArgs({
    options: {
      port: { type: 'string', default: '0' },
      endpoint: { type: 'string' },
      bucket: { type: 'string' },
      path: { type: 'string', default: '/files' },
      'part-size': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  }))
} catch (e) {
  usage(e.message)
}
if (args.help) usage()
if (!args.endpoint) usage('--endpoint is required')
if (!args.bucket) usage('--bucket is required')
if (!/^\d+$/.test(args.port) || Number(args.port) > 65535) usage(`bad --port ${args.port}`)
if (!args.path.startsWith('/')) usage('--path must start with /')
const { AWS_ACCESS_KEY_ID: accessKeyId, AWS_SECRET_ACCESS_KEY: secretAccessKey } = process.env
if (!accessKeyId || !secretAccessKey) usage('AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are required')

const storeOptions = {
  s3ClientConfig: {
    bucket: args.bucket,
    endpoint: args.endpoint,
    region: process.env.AWS_REGION || 'us-east-1',
    forcePathStyle: true,
    credentials: { accessKeyId, secretAccessKey },
  },
}
if (args['part-size'] !== undefined) {
  if (!/^\d+$/.test(args['part-size'])) usage(`bad --part-size ${args['part-size']}`)
  storeOptions.partSize = Number(args['part-size'])
}

const tus = new Server({
  path: args.path,
  datastore: new S3Store(storeOptions),
  // Every error answer (from S3 or the store) on stderr, so a benchmark can tell a clean run.
  onResponseError(_req, err) {
    process.stderr.write(`error-response ${err.status_code ?? 500} ${err.stack || err.message || err}\n`)
  },
})
tus.on(EVENTS.POST_CREATE, (_req, upload) => {
  process.stderr.write(`created ${upload.id}\n`)
})
tus.on(EVENTS.POST_FINISH, (_req, _res, upload) => {
  process.stderr.write(`finished ${upload.id} ${upload.size}\n`)
})

const server = tus.listen({ host: '127.0.0.1', port: Number(args.port) })
server.on('listening', () => {
  const { port } = server.address()
  process.stdout.write(`listening on http://127.0.0.1:${port}\n`)
})
server.on('error', (e) => {
  process.stderr.write(`error: ${e.stack || e}\n`)
  process.exit(1)
})

let stopping = false
function stop(why) {
  if (stopping) return
  stopping = true
  process.stderr.write(`stopping (${why})\n`)
  server.close(() => process.exit(0))
  server.closeAllConnections()
  setTimeout(() => process.exit(0), 1000).unref()
}

process.on('SIGTERM', () => stop('SIGTERM'))
process.on('SIGINT', () => stop('SIGINT'))
process.stdin.on('end', () => stop('stdin closed'))
process.stdin.on('close', () => stop('stdin closed'))
process.stdin.on('error', () => stop('stdin error'))
process.stdin.resume()
