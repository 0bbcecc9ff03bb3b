#!/usr/bin/env node
// Interop driver: a real browser (Debian's Chromium, driven by playwright-core)
// against `ferry serve`.
//
//   node browser.mjs uppy <files-endpoint> <file> [--app-port N] [--timeout SECONDS]
//   node browser.mjs rebind <ferry-port> [--timeout SECONDS]
//
// uppy:   serves a page with Uppy (Dashboard + Tus) from its own HTTP server on
//         127.0.0.1:<app-port> (default: a free port), loads it as
//         http://app.test:<app-port>/ (a cross-origin page to ferry), puts <file>
//         into the Dashboard's file input and runs uppy.upload().
//         Prints {"ok": bool, "uploadURL": string|null, "error": string|null}.
//         The caller starts ferry with --cors-origins http://app.test:<app-port>,
//         so it picks the port and passes --app-port.
// rebind: DNS rebinding as an attacker page sees it: rebind.test resolves to
//         127.0.0.1, so the page http://rebind.test:<ferry-port>/files/ is
//         same-origin with ferry. Navigates there, then POSTs a creation from
//         inside the page. Prints {"navigation": status|null, "post": status|null,
//         "body": string|null, "origin": the page's origin, "error": string|null}.
//
// stdout: that one JSON line. stderr: the page's console messages, page errors,
// every response (`response: <status> <method> <url>`) and failed requests (for
// debugging; CORS preflights are not among them).
// Exit 0 whenever the script itself worked, even if the upload failed (ok=false);
// 1 on a tooling error, 2 on bad usage, 124 on timeout (default 60 s). The
// browser and the HTTP server are always closed.
//
// Needs /usr/bin/chromium (apt package `chromium`); playwright-core downloads no
// browser. The only network is loopback, hence the host-resolver rules.
import fs from 'node:fs'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { chromium } from 'playwright-core'

const USAGE = `usage: node browser.mjs uppy <files-endpoint> <file> [--app-port N] [--timeout SECONDS]
       node browser.mjs rebind <ferry-port> [--timeout SECONDS]`

function usage(msg) {
  if (msg) process.stderr.write(`error: ${msg}\n`)
  process.stderr.write(`${USAGE}\n`)
  process.exit(2)
}

let args, pos
try {
  ;({ values: args, positionals: pos } = parseArgs({
    options: { 'app-port': { type: 'string' }, timeout: { type: 'string' } },
    allowPositionals: true,
  }))
} catch (e) {
  usage(e.message)
}
const port = (s, name) => {
  if (!/^\d+$/.test(s ?? '') || Number(s) > 65535) usage(`${name} must be a port number, got ${JSON.stringify(s)}`)
  return Number(s)
}
const timeoutSecs = args.timeout === undefined ? 60 : Number(args.timeout)
if (!(timeoutSecs > 0)) usage('--timeout must be a positive number of seconds')

let browser // closed on every exit path
let server
// Chromium's own temp dir, removed at the end: a browser closed mid-request
// (timeout) leaves /tmp/org.chromium.Chromium.* behind otherwise.
let tmp
const log = (line) => process.stderr.write(`${line}\n`)

// Safe to call twice (timeout, then main's finally).
async function cleanup() {
  const [b, s] = [browser, server]
  browser = server = undefined
  await b?.close().catch((e) => log(`browser close: ${e.message}`))
  if (s) {
    s.closeAllConnections()
    await new Promise((resolve) => s.close(resolve))
  }
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true })
}

// Bound the whole run: a hung upload or browser must not hang the Rust test.
// Closing the browser makes the pending step throw; main then exits 124 without
// printing a result. The second timer is a backstop in case nothing throws.
let timedOut = false
const timer = setTimeout(() => {
  timedOut = true
  log(`error: timed out after ${timeoutSecs} s`)
  setTimeout(() => process.exit(124), 5000).unref()
  cleanup()
}, timeoutSecs * 1000)

async function launch() {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-browser-'))
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    env: { ...process.env, TMPDIR: tmp },
    args: [
      '--no-sandbox', // runs as root in CI
      '--disable-gpu',
      '--disable-quic',
      // No calls home: there is no network but loopback.
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-proxy-server', // a proxy from the environment must not see app.test
      '--host-resolver-rules=MAP app.test 127.0.0.1, MAP rebind.test 127.0.0.1',
    ],
  })
  const page = await (await browser.newContext()).newPage()
  // Everything the page says goes to stderr: CORS refusals show up here.
  page.on('console', (m) => log(`console.${m.type()}: ${m.text()}`))
  page.on('pageerror', (e) => log(`pageerror: ${e.message}`))
  page.on('requestfailed', (r) => log(`requestfailed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`))
  page.on('response', (r) => log(`response: ${r.status()} ${r.request().method()} ${r.url()}`))
  return page
}

// ------------------------------------------------------------------ uppy ----
async function uppy(endpoint, file, appPort) {
  if (!fs.statSync(file).isFile()) throw new Error(`not a regular file: ${file}`)
  const dist = new URL('./node_modules/uppy/dist/', import.meta.url)
  const config = { endpoint, chunkSize: 256 * 1024 } // several PATCHes for files > 256 KiB
  const page = `<!doctype html>
<html><head><meta charset="utf-8"><title>ferry uppy</title>
<link rel="stylesheet" href="/uppy.min.css"></head>
<body><div id="dashboard"></div>
<script type="module">
import { Uppy, Dashboard, Tus } from '/uppy.min.mjs'
const config = ${JSON.stringify(config).replace(/</g, '\\u003c')}
window.uppy = new Uppy({ autoProceed: false })
  .use(Dashboard, { inline: true, target: '#dashboard' })
  .use(Tus, {
    endpoint: config.endpoint,
    chunkSize: config.chunkSize,
    retryDelays: [], // fail fast: a refused request ends the upload
    removeFingerprintOnSuccess: true,
  })
</script></body></html>`
  const files = {
    '/': ['text/html; charset=utf-8', () => page],
    '/uppy.min.mjs': ['text/javascript', () => fs.readFileSync(new URL('uppy.min.mjs', dist))],
    '/uppy.min.css': ['text/css', () => fs.readFileSync(new URL('uppy.min.css', dist))],
    '/favicon.ico': ['image/x-icon', () => ''], // keeps a 404 out of the console
  }
  server = http.createServer((req, res) => {
    const f = files[new URL(req.url, 'http://x').pathname]
    if (!f) return res.writeHead(404).end()
    res.writeHead(200, { 'content-type': f[0], 'cache-control': 'no-store' }).end(f[1]())
  })
  await new Promise((resolve, reject) => {
    server.once('error', reject)
    server.listen(appPort, '127.0.0.1', resolve)
  })
  const origin = `http://app.test:${server.address().port}`
  log(`app origin ${origin}`)

  const p = await launch()
  const nav = await p.goto(`${origin}/`)
  if (nav?.status() !== 200) throw new Error(`test page answered ${nav?.status()}`)
  await p.waitForFunction(() => window.uppy)
  // The Dashboard renders hidden inputs for files, folders (webkitdirectory) and
  // the camera; tag the plain file one and hand it the file as a person would.
  await p.evaluate(() => {
    const input = [...document.querySelectorAll('input.uppy-Dashboard-input[type=file]')].find(
      (el) => !el.webkitdirectory && !el.hasAttribute('capture'),
    )
    input.setAttribute('data-ferry', 'files')
  })
  await p.setInputFiles('input[data-ferry=files]', file)
  await p.waitForFunction(() => window.uppy.getFiles().length === 1)

  // upload() resolves with {successful, failed} (it does not reject on failure).
  const r = await p.evaluate(async () => {
    const result = await window.uppy.upload()
    const ok = result?.successful?.[0]
    const bad = result?.failed?.[0]
    return {
      ok: !!ok && !bad,
      uploadURL: ok?.uploadURL ?? ok?.response?.uploadURL ?? null,
      error: bad ? String(bad.error ?? 'failed') : ok ? null : `no result: ${JSON.stringify(result)}`,
    }
  })
  return r
}

// ---------------------------------------------------------------- rebind ----
async function rebind(ferryPort) {
  const p = await launch()
  const out = { navigation: null, post: null, body: null, origin: null, error: null }
  try {
    const nav = await p.goto(`http://rebind.test:${ferryPort}/files/`)
    out.navigation = nav?.status() ?? null
  } catch (e) {
    out.error = `navigation: ${e.message.split('\n')[0]}`
    return out
  }
  // The page's own origin is now http://rebind.test:<port>: a same-origin fetch
  // needs no CORS, so only the server's Host check stands in its way.
  Object.assign(
    out,
    await p.evaluate(async () => {
      const origin = location.origin
      try {
        const r = await fetch('/files/', {
          method: 'POST',
          headers: { 'Tus-Resumable': '1.0.0', 'Upload-Length': '5' },
        })
        return { origin, post: r.status, body: await r.text() }
      } catch (e) {
        return { origin, error: `fetch: ${e.message}` }
      }
    }),
  )
  return out
}

// ------------------------------------------------------------------ main ----
let code = 0
try {
  const [mode, ...rest] = pos
  let result
  if (mode === 'uppy') {
    if (rest.length !== 2) usage('uppy takes <files-endpoint> <file>')
    const appPort = args['app-port'] === undefined ? 0 : port(args['app-port'], '--app-port')
    result = await uppy(rest[0], path.resolve(rest[1]), appPort)
  } else if (mode === 'rebind') {
    if (rest.length !== 1) usage('rebind takes <ferry-port>')
    result = await rebind(port(rest[0], '<ferry-port>'))
  } else {
    usage(mode ? `unknown mode ${JSON.stringify(mode)}` : undefined)
  }
  if (!timedOut) process.stdout.write(`${JSON.stringify(result)}\n`)
} catch (e) {
  if (!timedOut) log(`error: ${e.stack ?? e}`)
  code = 1
} finally {
  clearTimeout(timer)
  await cleanup()
}
process.exit(timedOut ? 124 : code)
