#!/usr/bin/env node
// Benchmark driver: upload every regular file below a directory with tus-js-client (Node
// build), one after another in this one process — the way a script using tus-js-client
// would send a folder. Metadata: filename and relativePath (`/`-separated, starting with the
// directory's own name), like `ferry upload DIR URL`.
//
//   node tus_js_upload_many.mjs --endpoint URL --dir PATH [--chunk-size BYTES]
//
// stdout: one line per file, `<relativePath> <upload URL>`, then a last line
//         `files <n> bytes <total> seconds <wall time of the uploads> files_per_s <rate>`.
// stderr: `error: ...` on the first failure (exit 1). Exit 2 on bad usage.
import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { Upload } from 'tus-js-client'

const USAGE = 'usage: node tus_js_upload_many.mjs --endpoint URL --dir PATH [--chunk-size BYTES]'

function usage(msg) {
  if (msg) process.stderr.write(`error: ${msg}\n`)
  process.stderr.write(`${USAGE}\n`)
  process.exit(2)
}

let args
try {
  ;({ values: args } = parseArgs({
    options: {
      endpoint: { type: 'string' },
      dir: { type: 'string' },
      'chunk-size': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
    allowPositionals: false,
  }))
} catch (e) {
  usage(e.message)
}
if (args.help) usage()
if (!args.endpoint) usage('--endpoint is required')
if (!args.dir) usage('--dir is required')
const chunkSize = args['chunk-size'] ? Number(args['chunk-size']) : Infinity
if (!(chunkSize > 0)) usage('--chunk-size must be a positive number of bytes')

const top = path.resolve(args.dir)
if (!fs.statSync(top).isDirectory()) usage(`--dir is not a directory: ${top}`)

// Every regular file below `top`, sorted by relative path; symlinks are not followed.
function walk(dir, rel, out) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name)
    const r = `${rel}/${e.name}`
    if (e.isDirectory()) walk(p, r, out)
    else if (e.isFile()) out.push([r, p])
  }
  return out
}
const files = walk(top, path.basename(top), []).sort((a, b) => (a[0] < b[0] ? -1 : 1))

function uploadOne(rel, file) {
  return new Promise((resolve, reject) => {
    const upload = new Upload(fs.createReadStream(file), {
      endpoint: args.endpoint,
      chunkSize,
      retryDelays: [0, 500, 1000],
      metadata: { filename: path.basename(file), relativePath: rel },
      // Each file is uploaded once, as with ferry on a first run.
      storeFingerprintForResuming: false,
      onError: reject,
      onSuccess: () => resolve(upload.url),
    })
    upload.start()
  })
}

let bytes = 0
const t0 = process.hrtime.bigint()
for (const [rel, file] of files) {
  try {
    const url = await uploadOne(rel, file)
    bytes += fs.statSync(file).size
    process.stdout.write(`${rel} ${url}\n`)
  } catch (e) {
    process.stderr.write(`error: ${rel}: ${e && e.message ? e.message : e}\n`)
    process.exit(1)
  }
}
const seconds = Number(process.hrtime.bigint() - t0) / 1e9
process.stdout.write(
  `files ${files.length} bytes ${bytes} seconds ${seconds.toFixed(3)} files_per_s ${(files.length / seconds).toFixed(1)}\n`,
)
