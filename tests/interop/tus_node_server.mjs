#!/usr/bin/env node
// Interop driver: the reference tus server (@tus/server + @tus/file-store),
// so ferry's client can be tested against a third-party server.
//
//   node tus_node_server.mjs --port 0 --dir DIR [--path /files]
//
// Listens on 127.0.0.1 only. Once bound it prints, on stdout,
//   listening on http://127.0.0.1:PORT
// (the creation endpoint is then http://127.0.0.1:PORT<path>).
// @tus/file-store keeps each upload's bytes at DIR/<id> and its info at
// DIR/<id>.json.
// stderr gets `created <id>` / `finished <id> <size>` lines.
// Exits when its stdin closes (so a test harness that dies never leaves it
// orphaned), and on SIGTERM/SIGINT.
import fs from 'node:fs'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { FileStore } from '@tus/file-store'
import { EVENTS, Server } from '@tus/server'

const USAGE = 'usage: node tus_node_server.mjs --port PORT --dir DIR [--path /files]'
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
      dir: { type: 'string' },
      path: { type: 'string', default: '/files' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  }))
} catch (e) {
  usage(e.message)
}
if (args.help) usage()
if (!args.dir) usage('--dir is required')
if (!/^\d+$/.test(args.port) || Number(args.port) > 65535) usage(`bad --port ${args.port}`)
if (!args.path.startsWith('/')) usage('--path must start with /')

const dir = path.resolve(args.dir)
fs.mkdirSync(dir, { recursive: true })

const tus = new Server({
  path: args.path,
  datastore: new FileStore({ directory: dir }),
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
  // Don't wait for in-flight uploads: a test that stops the server is done.
  server.close(() => process.exit(0))
  server.closeAllConnections()
  setTimeout(() => process.exit(0), 1000).unref()
}

process.on('SIGTERM', () => stop('SIGTERM'))
process.on('SIGINT', () => stop('SIGINT'))
// stdin EOF (or error, e.g. the harness died) => exit.
process.stdin.on('end', () => stop('stdin closed'))
process.stdin.on('close', () => stop('stdin closed'))
process.stdin.on('error', () => stop('stdin error'))
process.stdin.resume()
