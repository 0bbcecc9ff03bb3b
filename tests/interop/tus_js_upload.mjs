#!/usr/bin/env node
// Interop driver: upload one file with tus-js-client (Node build).
//
//   node tus_js_upload.mjs --endpoint URL --file PATH
//        [--chunk-size BYTES] [--metadata key=value]... [--metadata none]
//        [--url-storage PATH] [--parallel N] [--retry-delays 0,500,1000|none]
//        [--header 'Name: value']... [--protocol tus-v1|ietf-draft-03|ietf-draft-05]
//
// stdout: the final upload URL, alone, on success (exit 0).
// stderr: `progress <bytesUploaded> <bytesTotal>` lines (at most ~10/s, the
//         last one always printed), `upload-url <url>` once the upload URL is
//         known, `resume <url>` when resuming from --url-storage, `chunk <accepted>
//         <total>` after every acknowledged PATCH (or creation with data), and
//         `error: ...` on failure (exit 1). Exit 2 on bad usage.
//
// The file is given to tus-js-client as an fs.ReadStream, which tus-js-client
// recognises as a file (it has .path): it stat()s it for the size and opens a
// fresh ranged read stream for every PATCH, so the file is never loaded into
// memory whatever its size (the default chunkSize is Infinity = one PATCH).
//
// --protocol picks tus-js-client's wire protocol: tus-v1 (default), or its IETF
// resumable-upload draft modes (ietf-draft-03 sends Upload-Draft-Interop-Version 5,
// ietf-draft-05 sends 6 and Content-Type: application/partial-upload).
import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { FileUrlStorage, Upload } from 'tus-js-client'

const USAGE = `usage: node tus_js_upload.mjs --endpoint URL --file PATH [--chunk-size BYTES]
       [--metadata key=value]... [--metadata none] [--url-storage PATH]
       [--parallel N] [--retry-delays 0,500,1000|none] [--header 'Name: value']...
       [--protocol tus-v1|ietf-draft-03|ietf-draft-05]`

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
      file: { type: 'string' },
      'chunk-size': { type: 'string' },
      metadata: { type: 'string', multiple: true },
      'url-storage': { type: 'string' },
      parallel: { type: 'string' },
      'retry-delays': { type: 'string' },
      header: { type: 'string', multiple: true },
      protocol: { type: 'string' },
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
if (!args.file) usage('--file is required')

function positiveInt(name, s) {
  if (!/^\d+$/.test(s) || Number(s) < 1 || !Number.isSafeInteger(Number(s))) {
    usage(`${name} must be a positive integer, got ${JSON.stringify(s)}`)
  }
  return Number(s)
}

const filePath = path.resolve(args.file)
let stat
try {
  stat = fs.statSync(filePath)
} catch (e) {
  usage(`cannot stat --file: ${e.message}`)
}
if (!stat.isFile()) usage(`--file is not a regular file: ${filePath}`)

// Metadata: default {filename}; `--metadata none` sends none; otherwise exactly
// the given key=value pairs (a bare `key` means an empty value).
let metadata = { filename: path.basename(filePath) }
if (args.metadata) {
  if (args.metadata.length === 1 && args.metadata[0] === 'none') {
    metadata = {}
  } else {
    metadata = {}
    for (const kv of args.metadata) {
      const i = kv.indexOf('=')
      const key = i < 0 ? kv : kv.slice(0, i)
      if (!key) usage(`bad --metadata ${JSON.stringify(kv)}`)
      metadata[key] = i < 0 ? '' : kv.slice(i + 1)
    }
  }
}

const headers = {}
for (const h of args.header ?? []) {
  const i = h.indexOf(':')
  if (i < 1) usage(`bad --header ${JSON.stringify(h)} (want 'Name: value')`)
  headers[h.slice(0, i).trim()] = h.slice(i + 1).trim()
}

// tus-js-client fires URL-storage writes without awaiting them (notably the
// removal done by removeFingerprintOnSuccess, started just before onSuccess).
// Exiting right away would leave the entry behind and, worse, a stale
// `PATH.lock` directory that makes the next run fail to take the lock. This
// wrapper tracks the in-flight operations so we can wait for them before exit.
class TrackedUrlStorage {
  constructor(inner) {
    this.inner = inner
    this.pending = new Set()
  }
  _track(p) {
    this.pending.add(p)
    const done = () => this.pending.delete(p)
    p.then(done, done)
    return p
  }
  findAllUploads() {
    return this._track(this.inner.findAllUploads())
  }
  findUploadsByFingerprint(fingerprint) {
    return this._track(this.inner.findUploadsByFingerprint(fingerprint))
  }
  removeUpload(urlStorageKey) {
    return this._track(this.inner.removeUpload(urlStorageKey))
  }
  addUpload(fingerprint, upload) {
    return this._track(this.inner.addUpload(fingerprint, upload))
  }
  async drain() {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending])
  }
}

const options = {
  endpoint: args.endpoint,
  metadata,
  headers,
  storeFingerprintForResuming: false,
  removeFingerprintOnSuccess: false,
}
const PROTOCOLS = ['tus-v1', 'ietf-draft-03', 'ietf-draft-05']
if (args.protocol !== undefined) {
  if (!PROTOCOLS.includes(args.protocol)) {
    usage(`--protocol must be one of ${PROTOCOLS.join(', ')}, got ${JSON.stringify(args.protocol)}`)
  }
  options.protocol = args.protocol
}
if (args['chunk-size'] !== undefined) {
  options.chunkSize = positiveInt('--chunk-size', args['chunk-size'])
}
if (args.parallel !== undefined) {
  options.parallelUploads = positiveInt('--parallel', args.parallel)
}
if (args['retry-delays'] !== undefined) {
  const s = args['retry-delays'].trim()
  if (s === '' || s === 'none') {
    options.retryDelays = null
  } else {
    options.retryDelays = s.split(',').map((d) => {
      if (!/^\d+$/.test(d.trim())) usage(`bad --retry-delays ${JSON.stringify(s)}`)
      return Number(d.trim())
    })
  }
}
if (args['url-storage'] !== undefined) {
  const storagePath = path.resolve(args['url-storage'])
  fs.mkdirSync(path.dirname(storagePath), { recursive: true })
  options.urlStorage = new TrackedUrlStorage(new FileUrlStorage(storagePath))
  options.storeFingerprintForResuming = true
  options.removeFingerprintOnSuccess = true
}

// Wait (bounded) for pending URL-storage writes, then exit.
async function exitAfterDrain(code) {
  if (options.urlStorage) {
    await Promise.race([options.urlStorage.drain(), new Promise((r) => setTimeout(r, 5000))])
  }
  process.exit(code)
}

// ---- progress reporting (throttled, last one always printed) ----
const PROGRESS_INTERVAL_MS = 100
let lastPrinted = null
let pending = null
let lastTime = 0
function printProgress(p) {
  process.stderr.write(`progress ${p[0]} ${p[1]}\n`)
  lastPrinted = p
  pending = null
  lastTime = Date.now()
}
function onProgress(sent, total) {
  const p = [sent, total]
  if (Date.now() - lastTime >= PROGRESS_INTERVAL_MS) printProgress(p)
  else pending = p
}
function flushProgress() {
  if (pending) printProgress(pending)
}
const flushTimer = setInterval(flushProgress, PROGRESS_INTERVAL_MS)
flushTimer.unref()

// fs.ReadStream with a path => tus-js-client's FileSource (ranged re-reads).
// The stream is opened but never read from; tus-js-client destroys it at the end.
const input = fs.createReadStream(filePath)
input.on('error', (e) => fail(e))

// 'running' -> ('succeeding' ->) 'done'. An error reported while succeeding
// (a failed URL-storage removal) still wins and makes the run exit 1.
let state = 'running'
function fail(err) {
  if (state === 'done') return
  state = 'done'
  flushProgress()
  let msg = err?.stack || String(err)
  // DetailedError carries the request/response; include what the server said.
  const res = err?.originalResponse
  if (res) {
    msg += `\nresponse: ${res.getStatus()} ${JSON.stringify(res.getBody())}`
  }
  process.stderr.write(`error: ${msg}\n`)
  exitAfterDrain(1)
}

const upload = new Upload(input, {
  ...options,
  onProgress,
  onChunkComplete(_chunkSize, accepted, total) {
    process.stderr.write(`chunk ${accepted} ${total}\n`)
  },
  onUploadUrlAvailable() {
    // Not called for parallel uploads' final URL (only for non-parallel).
    process.stderr.write(`upload-url ${upload.url}\n`)
  },
  onError: fail,
  async onSuccess() {
    if (state !== 'running') return
    state = 'succeeding'
    flushProgress()
    // Make sure the final "progress total total" line is there, even for an
    // upload that was already complete on the server (no PATCH sent).
    if (!lastPrinted || lastPrinted[0] !== stat.size || lastPrinted[1] !== stat.size) {
      printProgress([stat.size, stat.size])
    }
    // Wait for the fingerprint removal (removeFingerprintOnSuccess) first; if
    // it fails, tus-js-client reports it through onError -> fail -> exit 1.
    await options.urlStorage?.drain()
    if (state === 'done') return
    state = 'done'
    process.stdout.write(`${upload.url}\n`)
    exitAfterDrain(0)
  },
})

try {
  if (options.urlStorage) {
    const previous = await upload.findPreviousUploads()
    if (previous.length > 0) {
      const prev = previous[0]
      process.stderr.write(
        `resume ${prev.uploadUrl ?? (prev.parallelUploadUrls ?? []).join(' ')}\n`,
      )
      upload.resumeFromPreviousUpload(prev)
    }
  }
  upload.start()
} catch (e) {
  fail(e)
}
