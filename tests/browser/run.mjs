// Browser end-to-end test of the inbox server. Started by run.sh, which
// installs Chromium and the npm packages, builds the client package
// (clients/web), bundles src/ with it into dist/app.js and builds the server.
//
// Starts two real inbox servers (the debug binary, temporary databases, push
// off) and a static server for the client page on a third loopback port, so
// every call is cross-origin as for the real app. Two browser contexts are
// two users, A and B; each page holds its own Ed25519 key. Every network call
// happens in the page through @piqchat/inbox-client (gRPC-web, or its signing
// fetch of the JSON gateway); this script only tells the pages what to do
// and checks what they report.
//
// Environment: PIQCHAT_INBOX_BIN (the server binary, required),
// CHROMIUM (default /usr/bin/chromium), BROWSER_TEST_ARTIFACTS (where to put
// screenshots and logs on failure; default a new folder under $TMPDIR),
// BROWSER_TEST_TIMEOUT_S (the whole run's limit, default 150).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import http from "node:http";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "../..");
const BIN = process.env.PIQCHAT_INBOX_BIN;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ATTACHMENT_BYTES = 5 * 1024 * 1024;
const WATCHDOG_MS = 1000 * Number(process.env.BROWSER_TEST_TIMEOUT_S || 150);
// Playwright adds --headless and a fresh temporary --user-data-dir itself.
const CHROMIUM_FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-quic",
  "--no-first-run",
];

const started = Date.now();
const secs = (ms) => `${(ms / 1000).toFixed(1)} s`;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "piqchat-browser-"));
const servers = [];
const pages = {}; // label -> { page, console: string[] }
let browser;
let staticServer;
let finishing = false;

// ---------------------------------------------------------------- servers

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

// eslint-disable-next-line no-control-regex
const stripAnsi = (s) => s.replace(/\x1b\[[0-9;]*m/g, "");

/**
 * Starts one inbox server on a free loopback port with its own database and
 * attachments folder, and resolves once it listens, with the sign-up invite
 * link it printed on first start.
 */
async function startInbox(name) {
  const dir = path.join(tmp, name);
  fs.mkdirSync(dir);
  const port = await freePort();
  // A clean environment: only what the server needs, so no PUBLIC_URL,
  // PUSH_VAPID_CONTACT (push stays off: nothing leaves the machine) or other
  // setting of the caller's leaks in; the working directory has no .env.
  const env = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: process.env.HOME ?? dir,
    NO_COLOR: "1",
    RUST_LOG: "info",
    RUST_BACKTRACE: "1", // for panics; not for every error
    RUST_LIB_BACKTRACE: "0",
    BIND_ADDRESS: "127.0.0.1",
    PORT: String(port),
    // The metrics listener has a fixed default port: two instances on one
    // machine would collide on it.
    METRICS_ADDRESS: "127.0.0.1:0",
    DATABASE_PATH: path.join(dir, "inbox.sqlite"),
    PARCEL_ATTACHMENTS_UPLOAD_PATH: path.join(dir, "attachments"),
  };
  // The server dies with this script even if it is killed outright.
  const [cmd, args] = fs.existsSync("/usr/bin/setpriv")
    ? ["/usr/bin/setpriv", ["--pdeathsig", "TERM", "--", BIN]]
    : [BIN, []];
  const child = spawn(cmd, args, { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
  const logPath = path.join(dir, "server.log");
  const logFile = fs.createWriteStream(logPath);
  const server = { name, port, url: `http://127.0.0.1:${port}`, child, logPath, exited: null };
  servers.push(server);
  child.on("exit", (code, signal) => (server.exited = { code, signal }));

  let invite = null;
  let all = "";
  return await new Promise((resolve, reject) => {
    // The invite link comes on stdout and the listening line on stderr: two
    // pipes, so either may arrive first.
    let listening = false;
    const timer = setTimeout(
      () =>
        reject(
          new Error(
            listening
              ? `${name} printed no sign-up invite link; log: ${logPath}`
              : `${name} did not start within 30 s; log: ${logPath}`,
          ),
        ),
      30_000,
    );
    // One line buffer per pipe: a chunk of one pipe may end mid-line while
    // the other pipe's next chunk arrives.
    const lines = () => {
      let buffered = "";
      return (chunk) => {
        logFile.write(chunk);
        const text = stripAnsi(chunk.toString());
        buffered += text;
        all += text;
        let nl;
        while ((nl = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, nl).trim();
          buffered = buffered.slice(nl + 1);
          if (/^https:\/\/\S+#\?exchange-url=\S+$/.test(line)) invite = line;
          if (line.includes("listening")) listening = true;
          if (listening && invite) {
            clearTimeout(timer);
            resolve({ ...server, invite });
          }
        }
      };
    };
    child.stdout.on("data", lines());
    child.stderr.on("data", lines());
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${BIN}: ${e.message}`));
    });
    child.on("exit", (code, signal) => {
      clearTimeout(timer);
      const tail = all.trim().split("\n").slice(-6).join("\n  ");
      reject(new Error(`${name} exited at start (code ${code}, signal ${signal}); its output ends with:\n  ${tail}`));
    });
  });
}

/** The client page and its bundle; nothing else. */
async function startStatic() {
  const files = {
    "/": ["index.html", "text/html; charset=utf-8"],
    "/index.html": ["index.html", "text/html; charset=utf-8"],
    "/app.js": ["dist/app.js", "text/javascript; charset=utf-8"],
  };
  const srv = http.createServer((req, res) => {
    const pathname = new URL(req.url, "http://x").pathname;
    if (pathname === "/favicon.ico") {
      res.writeHead(204).end();
      return;
    }
    const f = files[pathname];
    if (!f) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": f[1], "cache-control": "no-store" });
    fs.createReadStream(path.join(HERE, f[0])).pipe(res);
  });
  await new Promise((resolve) => srv.listen(0, "127.0.0.1", resolve));
  staticServer = srv;
  return `http://127.0.0.1:${srv.address().port}/`;
}

// ---------------------------------------------------------------- pages

async function openUser(label, appUrl) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const lines = [];
  const at = () => new Date().toISOString().slice(11, 23);
  page.on("console", (m) => lines.push(`${at()} console.${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => lines.push(`${at()} pageerror: ${e.stack || e.message}`));
  page.on("requestfailed", (r) =>
    lines.push(`${at()} requestfailed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`),
  );
  page.on("response", (r) => {
    if (r.status() >= 400) lines.push(`${at()} HTTP ${r.status()}: ${r.request().method()} ${r.url()}`);
  });
  pages[label] = { page, console: lines };
  await page.goto(appUrl);
  await page.waitForFunction(() => typeof window.piq === "object", null, { timeout: 10_000 });
  const userId = await page.evaluate((l) => window.piq.init(l), label);
  assert.match(userId, /^[A-Za-z0-9_-]{43}$/, `${label}'s user id`);
  return { label, page, id: userId };
}

/** A gRPC-web call made by the page; returns {ok} or {error: {code, message}}. */
function call(user, server, service, method, request = {}, opts = {}) {
  return user.page.evaluate(
    ([s, sv, m, r, o]) => window.piq.call(s, sv, m, r, o),
    [server, service, method, request, opts],
  );
}

function ok(result, what) {
  if (result.error) assert.fail(`${what}: expected OK, got ${result.error.code}: ${result.error.message}`);
  return result.ok;
}

function fails(result, code, what, messagePattern) {
  if (!result.error) assert.fail(`${what}: expected ${code}, got OK ${JSON.stringify(result.ok)}`);
  assert.equal(result.error.code, code, `${what}: status (message: ${result.error.message})`);
  if (messagePattern) assert.match(result.error.message, messagePattern, `${what}: message`);
  return result.error;
}

// ---------------------------------------------------------------- steps

const results = [];
const timings = {};
let current = "start-up";

async function step(name, fn) {
  if (finishing) throw new Error("aborted");
  current = name;
  const t = Date.now();
  await fn();
  if (finishing) throw new Error("aborted");
  results.push({ name, ms: Date.now() - t });
  console.log(`ok ${results.length} - ${name} (${Date.now() - t} ms)`);
}

async function flow() {
  if (!BIN || !fs.existsSync(BIN)) throw new Error(`PIQCHAT_INBOX_BIN must name the server binary (got ${BIN})`);
  const [inbox1, inbox2, appUrl] = await Promise.all([startInbox("inbox1"), startInbox("inbox2"), startStatic()]);
  console.log(`inbox 1 ${inbox1.url}, inbox 2 (foreign) ${inbox2.url}, client page ${appUrl}`);
  for (const inbox of [inbox1, inbox2]) {
    assert.notEqual(new URL(appUrl).origin, new URL(inbox.url).origin, "the page is cross-origin to the inboxes");
  }
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS });
  const [A, B] = await Promise.all([openUser("A", appUrl), openUser("B", appUrl)]);
  const MiB5 = ATTACHMENT_BYTES;
  let tag1, tag2, sharedParcelId;

  await step("the page's signer reproduces docs/AUTH.md's worked example byte for byte", async () => {
    const doc = fs.readFileSync(path.join(REPO, "docs/AUTH.md"), "utf8");
    const ex = await A.page.evaluate(() => window.piq.authExample());
    assert.equal(ex.userId, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "the test key's user id");
    assert.ok(doc.includes(`Signature-Input: ${ex.signatureInput}\n`), `Signature-Input ${ex.signatureInput}`);
    assert.ok(doc.includes(`Signature: ${ex.signature}\n`), `Signature ${ex.signature}`);
    assert.ok(doc.includes(`\`\`\`text\n${ex.base}\n\`\`\``), `signature base:\n${ex.base}`);
  });

  await step("GetInfo from another origin over gRPC-web (CORS), both users, both servers", async () => {
    for (const u of [A, B]) {
      const info = ok(await u.page.evaluate(([n, url]) => window.piq.connect(n, url), ["inbox1", inbox1.url]), "GetInfo");
      assert.match(info.serverPublicKey, /^[A-Za-z0-9_-]{43}$/, "server_public_key");
      assert.match(info.vapidPublicKey, /^[A-Za-z0-9_-]{87}$/, "vapid_public_key (65 bytes)");
      assert.equal(info.pushEnabled, false, "push is off without PUSH_VAPID_CONTACT");
      assert.ok(info.limits.maxAttachmentBytes >= MiB5, "max attachment allows 5 MiB");
      assert.equal(info.statistics.usersTotal, 0, "no users yet");
      tag1 = info.serverPublicKey;
      const info2 = ok(await u.page.evaluate(([n, url]) => window.piq.connect(n, url), ["inbox2", inbox2.url]), "GetInfo 2");
      tag2 = info2.serverPublicKey;
    }
    assert.notEqual(tag1, tag2, "the two servers have different keys");
  });

  await step("A signs up through the first-start invite link", async () => {
    fails(await call(A, "inbox1", "AccountService", "getAccount", {}, { unsigned: true }), "UNAUTHENTICATED", "unsigned GetAccount");
    fails(await call(A, "inbox1", "AccountService", "getAccount"), "PERMISSION_DENIED", "GetAccount before sign-up");
    const link = await A.page.evaluate((l) => window.piq.parseInviteLink(l), inbox1.invite);
    assert.equal(link.host, "input_inbox_server_host", "placeholder host in the invite's accept URL");
    assert.equal(link.needsServer, true, "a sign-up invite is accepted on the user's server");
    assert.match(link.token, /^[0-9a-f-]{36}$/, "invite token is a UUID");
    const accepted = ok(
      await A.page.evaluate(([n, l]) => window.piq.acceptInvite(n, l), ["inbox1", inbox1.invite]),
      "AcceptExchange of the sign-up invite",
    );
    assert.equal(accepted.signUp, "SIGN_UP_RESULT_CREATED");
    assert.equal(accepted.offer, "", "a sign-up invite has an empty offer");
    fails(
      await B.page.evaluate(([n, l]) => window.piq.acceptInvite(n, l), ["inbox1", inbox1.invite]),
      "NOT_FOUND",
      "second accept of the same invite",
      /already/,
    );
    const account = ok(await call(A, "inbox1", "AccountService", "getAccount"), "GetAccount");
    assert.equal(account.userId, A.id);
    assert.equal(account.pushSubscribed, false);
    assert.deepEqual(account.contactIds, []);
  });

  await step("friend invite: A creates, B accepts and signs up, A gets B's answer", async () => {
    fails(await call(B, "inbox1", "AccountService", "getAccount"), "PERMISSION_DENIED", "B before sign-up");
    const offer = "offer: A's encrypted contact card";
    const answer = "answer: B's encrypted contact card";
    const created = ok(await call(A, "inbox1", "ExchangeService", "createExchange", { offer }), "CreateExchange");
    assert.match(created.token, /^[0-9a-f-]{36}$/, "token");
    assert.ok(created.acceptUrl.includes(created.token), `accept URL ${created.acceptUrl} holds the token`);
    const lifetime = (Date.parse(created.expiresAt) - Date.now()) / 1000;
    assert.ok(Math.abs(lifetime - 3600) < 120, `expires in about 60 min (got ${lifetime} s)`);
    const before = ok(await call(A, "inbox1", "ExchangeService", "getExchange", { token: created.token }), "GetExchange");
    assert.equal(before.state, "EXCHANGE_STATE_INITIATED");
    assert.equal(before.answer, undefined, "no answer before it is accepted");
    fails(await call(B, "inbox1", "ExchangeService", "getExchange", { token: created.token }), "PERMISSION_DENIED", "GetExchange by an unregistered B");
    const accepted = ok(
      await call(B, "inbox1", "ExchangeService", "acceptExchange", { token: created.token, answer, userId: B.id }),
      "AcceptExchange",
    );
    assert.equal(accepted.offer, offer);
    assert.equal(accepted.signUp, "SIGN_UP_RESULT_CREATED");
    const after = ok(await call(A, "inbox1", "ExchangeService", "getExchange", { token: created.token }), "GetExchange");
    assert.equal(after.state, "EXCHANGE_STATE_ACCEPTED");
    assert.equal(after.answer, answer);
    const invited = ok(await call(A, "inbox1", "AccountService", "listInvitedUsers"), "ListInvitedUsers").users;
    assert.deepEqual(invited.map((u) => u.userId), [A.id, B.id], "A, then the user A invited");
    assert.equal(invited[1].invitedByEntryId, invited[0].entryId, "B was invited by A");
  });

  await step("A and B whitelist each other (SetContacts)", async () => {
    assert.equal(ok(await call(A, "inbox1", "AccountService", "setContacts", { contactIds: [B.id] }), "A SetContacts").contactCount, 1);
    assert.equal(ok(await call(B, "inbox1", "AccountService", "setContacts", { contactIds: [A.id] }), "B SetContacts").contactCount, 1);
    assert.deepEqual(ok(await call(A, "inbox1", "AccountService", "getAccount"), "GetAccount").contactIds, [B.id]);
    assert.equal(ok(await call(B, "inbox1", "ParcelService", "checkAcceptance", { recipientId: A.id }), "CheckAcceptance").accepted, true);
  });

  let sent;
  await step("B sends A a 5 MiB attachment with unary gRPC-web SendParcel", async () => {
    sent = await B.page.evaluate((n) => window.piq.makeAttachment(n), MiB5);
    const stranger = await B.page.evaluate(() => window.piq.strangerId());
    const res = await B.page.evaluate(
      ([a, s]) =>
        window.piq.sendParcelWithAttachment("inbox1", "MEDIA", [
          { userId: a, content: "key material for A" },
          { userId: s, content: "key material for a stranger" },
        ]),
      [A.id, stranger],
    );
    const out = ok(res, "SendParcel");
    assert.deepEqual(out.deliveredRecipientIds, [A.id]);
    assert.deepEqual(out.forbiddenRecipientIds, [stranger], "an unregistered recipient is forbidden");
    timings.upload = res.ms;
  });

  await step("A lists it and downloads the attachment over gRPC-web server streaming; SHA-256 matches", async () => {
    const parcels = ok(await call(A, "inbox1", "ParcelService", "listParcels"), "ListParcels").parcels;
    assert.equal(parcels.length, 1, "one parcel");
    const [p] = parcels;
    assert.equal(p.type, "MEDIA");
    assert.equal(p.content, "key material for A");
    assert.equal(p.senderId, B.id);
    assert.equal(p.attachmentSize, MiB5);
    assert.ok(Math.abs(Date.parse(p.sentAt) - Date.now()) < 60_000, `sent_at ${p.sentAt} is now`);
    sharedParcelId = p.id;
    const dl = await A.page.evaluate((id) => window.piq.downloadAttachment("inbox1", id), p.id);
    const got = ok(dl, "DownloadAttachment");
    assert.equal(got.size, MiB5, "downloaded size");
    assert.equal(got.sha256, sent.sha256, "SHA-256 of the download equals what B sent");
    assert.ok(got.chunks > 1, `streamed in several messages (got ${got.chunks})`);
    assert.equal(got.xContentLength, String(MiB5), "x-content-length response header, readable cross-origin");
    timings.download = dl.ms;
  });

  await step("B's 30 MiB send over plain HTTP/1.1 is refused, and the page reads the status", async () => {
    // Over the attachment limit: the server answers before reading the body;
    // the page must see that answer, not a network error (and Chromium must
    // not re-send the signed request by itself, which would be a replay).
    await B.page.evaluate((n) => window.piq.makeAttachment(n), 30 * 1024 * 1024);
    // The package's checked send refuses it from GetInfo's limits, unsent.
    fails(
      await B.page.evaluate(
        (a) => window.piq.sendParcelWithAttachment("inbox1", "MEDIA", [{ userId: a, content: "too large" }]),
        A.id,
      ),
      "INVALID_ARGUMENT",
      "the package's limit check",
      /max_attachment_bytes/,
    );
    const res = await B.page.evaluate(
      (a) =>
        window.piq.sendParcelWithAttachment("inbox1", "MEDIA", [{ userId: a, content: "too large" }], { precheck: false }),
      A.id,
    );
    if (!res.error) assert.fail(`expected a refusal, got OK ${JSON.stringify(res.ok)}`);
    console.log(`  refused after ${res.ms} ms: ${res.error.code}: ${res.error.message}`);
    assert.ok(
      ["RESOURCE_EXHAUSTED", "OUT_OF_RANGE", "INVALID_ARGUMENT"].includes(res.error.code),
      `a status from the server, got ${res.error.code}: ${res.error.message}`,
    );
    assert.match(res.error.message, /limit/, "the message names the limit");
    const parcels = ok(await call(A, "inbox1", "ParcelService", "listParcels"), "ListParcels").parcels;
    assert.equal(parcels.length, 1, "nothing more was stored");
  });

  await step("delivery status: 1 waiting; A deletes the parcel; 0 waiting", async () => {
    const status = ok(await call(B, "inbox1", "ParcelService", "getDeliveryStatus", { recipientId: A.id }), "GetDeliveryStatus");
    assert.equal(status.waitingMediaParcels, 1);
    assert.equal(status.lastSeen, "LAST_SEEN_RECENTLY", "A listed just now");
    fails(await call(B, "inbox1", "ParcelService", "deleteParcel", { parcelId: sharedParcelId }), "NOT_FOUND", "B deleting A's parcel");
    ok(await call(A, "inbox1", "ParcelService", "deleteParcel", { parcelId: sharedParcelId }), "DeleteParcel");
    const after = ok(await call(B, "inbox1", "ParcelService", "getDeliveryStatus", { recipientId: A.id }), "GetDeliveryStatus");
    assert.equal(after.waitingMediaParcels, 0);
    assert.deepEqual(ok(await call(A, "inbox1", "ParcelService", "listParcels"), "ListParcels").parcels, []);
    const dl = await A.page.evaluate((id) => window.piq.downloadAttachment("inbox1", id), sharedParcelId);
    fails(dl, "NOT_FOUND", "download of a deleted parcel");
  });

  await step("A puts and gets a profile backup", async () => {
    fails(await call(A, "inbox1", "BackupService", "getBackup"), "NOT_FOUND", "GetBackup before any put");
    const content = await A.page.evaluate(() => window.piq.b64(crypto.getRandomValues(new Uint8Array(48 * 1024))));
    const put = ok(await call(A, "inbox1", "BackupService", "putBackup", { content }), "PutBackup");
    const first = ok(await call(A, "inbox1", "BackupService", "getBackup"), "GetBackup");
    assert.equal(first.content, content, "backup content round-trips");
    assert.equal(first.updatedAt, put.updatedAt);
    assert.equal(first.lastReadAt, undefined, "first read: no last_read_at");
    const second = ok(await call(A, "inbox1", "BackupService", "getBackup"), "GetBackup again");
    assert.ok(second.lastReadAt, "second read reports the first");
  });

  await step("A registers a browser-shaped push subscription through the signed JSON shim", async () => {
    ok(
      await A.page.evaluate(() => window.piq.putPushSubscription("inbox1", "https://push.example.invalid/sub/1")),
      "PUT /v1/account/push-subscription",
    );
    assert.equal(ok(await call(A, "inbox1", "AccountService", "getAccount"), "GetAccount").pushSubscribed, true);
    assert.equal(ok(await call(B, "inbox1", "AccountService", "getAccount"), "B GetAccount").pushSubscribed, false);
  });

  await step("foreign inbox: B registers on inbox 2, then sends A a parcel on inbox 1 signed with inbox 1's tag", async () => {
    const accepted = ok(
      await B.page.evaluate(([n, l]) => window.piq.acceptInvite(n, l), ["inbox2", inbox2.invite]),
      "AcceptExchange on inbox 2",
    );
    assert.equal(accepted.signUp, "SIGN_UP_RESULT_CREATED");
    assert.equal(ok(await call(B, "inbox2", "AccountService", "getAccount"), "GetAccount on inbox 2").userId, B.id);
    fails(await call(A, "inbox2", "AccountService", "getAccount"), "PERMISSION_DENIED", "A is not registered on inbox 2");
    // A signature made for inbox 2 (its tag) does not work at inbox 1.
    ok(await B.page.evaluate(([url, t]) => window.piq.connect("inbox1-with-inbox2-tag", url, t), [inbox1.url, tag2]), "connect");
    const content = "hello from B, whose home is inbox 2";
    const request = { type: "MEDIA", recipients: [{ userId: A.id, content }] };
    fails(
      await call(B, "inbox1-with-inbox2-tag", "ParcelService", "sendParcel", request),
      "UNAUTHENTICATED",
      "SendParcel signed for another server",
      /tag/,
    );
    const out = ok(await call(B, "inbox1", "ParcelService", "sendParcel", request), "SendParcel to inbox 1");
    assert.deepEqual(out.deliveredRecipientIds, [A.id]);
    const parcels = ok(await call(A, "inbox1", "ParcelService", "listParcels"), "ListParcels").parcels;
    assert.equal(parcels.length, 1);
    assert.equal(parcels[0].senderId, B.id);
    assert.equal(parcels[0].content, content);
    assert.equal(parcels[0].attachmentSize, undefined, "no attachment");
  });

  await step("A deletes the account; GetAccount then fails with PERMISSION_DENIED", async () => {
    ok(await call(A, "inbox1", "AccountService", "deleteAccount"), "DeleteAccount");
    fails(await call(A, "inbox1", "AccountService", "getAccount"), "PERMISSION_DENIED", "GetAccount after deletion");
    fails(
      await call(B, "inbox1", "ParcelService", "sendParcel", { type: "MEDIA", recipients: [{ userId: A.id, content: "x" }] }),
      "PERMISSION_DENIED",
      "SendParcel to a deleted account",
    );
  });
}

// ---------------------------------------------------------------- main

async function saveArtifacts(error) {
  const dir = process.env.BROWSER_TEST_ARTIFACTS
    ? path.resolve(process.env.BROWSER_TEST_ARTIFACTS)
    : fs.mkdtempSync(path.join(os.tmpdir(), "piqchat-browser-artifacts-"));
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, "error.txt"), `${error?.stack || error}\n`);
  for (const [label, { page, console: lines }] of Object.entries(pages)) {
    fs.writeFileSync(path.join(dir, `console-${label}.log`), lines.join("\n") + "\n");
    try {
      await page.screenshot({ path: path.join(dir, `screenshot-${label}.png`), fullPage: true, timeout: 5000 });
    } catch (e) {
      fs.appendFileSync(path.join(dir, "error.txt"), `screenshot of ${label} failed: ${e.message}\n`);
    }
  }
  for (const s of servers) {
    if (fs.existsSync(s.logPath)) fs.copyFileSync(s.logPath, path.join(dir, `${s.name}.log`));
  }
  return dir;
}

/** Ends what this script started: the browser, the static server, the inboxes. */
async function stopAll() {
  try {
    await browser?.close();
  } catch {
    /* already gone */
  }
  staticServer?.close();
  await Promise.all(
    servers.map(
      (s) =>
        new Promise((resolve) => {
          if (s.exited) return resolve();
          const kill = setTimeout(() => s.child.kill("SIGKILL"), 10_000);
          s.child.once("exit", () => {
            clearTimeout(kill);
            resolve();
          });
          s.child.kill("SIGTERM");
        }),
    ),
  );
}

function removeTmp() {
  fs.rmSync(tmp, { recursive: true, force: true });
}

async function fail(error) {
  if (finishing) return;
  finishing = true;
  console.log(`\nnot ok ${results.length + 1} - ${current}\n${error?.message || error}`);
  let where = "(could not save artifacts)";
  try {
    where = await saveArtifacts(error);
  } catch (e) {
    console.log(`saving artifacts failed: ${e.message}`);
  }
  await stopAll();
  removeTmp();
  console.log(`\nscreenshots, console logs and server logs: ${where}`);
  console.log(`browser: ${results.length} passed, 1 failed`);
  process.exit(1);
}

process.on("exit", () => {
  for (const s of servers) if (!s.exited) s.child.kill("SIGKILL");
});
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"]) {
  process.on(sig, () => fail(new Error(`interrupted by ${sig}`)));
}
process.on("unhandledRejection", (e) => fail(e));
const watchdog = setTimeout(() => fail(new Error(`timed out after ${secs(WATCHDOG_MS)}`)), WATCHDOG_MS);

try {
  await flow();
} catch (e) {
  await fail(e);
}
if (!finishing) {
  finishing = true;
  clearTimeout(watchdog);
  await stopAll();
  const unclean = servers.filter((s) => s.exited?.code !== 0);
  for (const s of unclean) {
    console.log(`warning: ${s.name} did not exit cleanly on SIGTERM: ${JSON.stringify(s.exited)}`);
  }
  removeTmp();
  console.log(
    `\nsummary: ${results.length} steps against 2 inbox servers from a page on another origin, ` +
      `Chromium ${browser.version()}; 5 MiB unary gRPC-web upload ${timings.upload} ms, ` +
      `streamed download ${timings.download} ms`,
  );
  console.log(`elapsed: ${secs(Date.now() - started)}`);
  console.log(`browser: ${results.length} passed, 0 failed`);
}
