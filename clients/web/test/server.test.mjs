// End to end against the real server binary on 127.0.0.1: sign-up through
// the printed invite link, a send with an attachment between two users,
// list and download, the push-subscription shim, and the refusals an app
// handles. Uses PIQCHAT_INBOX_BIN, else the repository's debug build; when
// neither exists the test is skipped (`cargo build --bin piqchat-inbox`).
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { Worker } from "node:worker_threads";
import {
  base64url,
  createInboxClient,
  errorFromResponse,
  generateIdentity,
  isClockSkew,
  isNotRegistered,
  isReplayed,
  isWrongServer,
  LimitError,
  SignUpResult,
  signRequest,
} from "../dist/index.js";
import { createWorkerSender } from "../dist/worker.js";

const REPO = fileURLToPath(new URL("../../../", import.meta.url));
const BIN =
  process.env.PIQCHAT_INBOX_BIN ||
  path.join(process.env.CARGO_TARGET_DIR || path.join(REPO, "target"), "debug", "piqchat-inbox");
const HAVE_BIN = fs.existsSync(BIN);
if (!HAVE_BIN) console.log(`# server tests skipped: no server binary at ${BIN} (set PIQCHAT_INBOX_BIN or cargo build --bin piqchat-inbox)`);

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** Starts the server with a fresh database; resolves with its URL and sign-up invite. */
async function startServer(t) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "piqchat-webclient-"));
  const port = await freePort();
  const child = spawn(BIN, [], {
    cwd: dir,
    stdio: ["ignore", "pipe", "pipe"],
    env: {
      PATH: process.env.PATH ?? "/usr/bin:/bin",
      HOME: dir,
      NO_COLOR: "1",
      RUST_LOG: "info",
      BIND_ADDRESS: "127.0.0.1",
      PORT: String(port),
      METRICS_ADDRESS: "127.0.0.1:0",
      DATABASE_PATH: path.join(dir, "inbox.sqlite"),
      PARCEL_ATTACHMENTS_UPLOAD_PATH: path.join(dir, "attachments"),
    },
  });
  t.after(() => {
    child.kill("SIGTERM");
    fs.rmSync(dir, { recursive: true, force: true });
  });
  let out = "";
  let invite;
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not start in 60 s:\n${out}`)), 60_000);
    const onData = (chunk) => {
      out += chunk.toString().replace(/\x1b\[[0-9;]*m/g, "");
      for (const line of out.split("\n")) {
        const l = line.trim();
        if (/^https:\/\/\S+#\?exchange-url=\S+$/.test(l)) invite = l;
        if (l.includes("listening") && invite) {
          clearTimeout(timer);
          resolve({ url: `http://127.0.0.1:${port}`, invite });
        }
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`the server exited (${code}):\n${out}`));
    });
  });
}

function randomBytes(n) {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i += 65536) crypto.getRandomValues(b.subarray(i, i + 65536));
  return b;
}

test("against the real server", { skip: !HAVE_BIN && `no server binary at ${BIN}` }, async (t) => {
  const server = await startServer(t);
  const alice = await generateIdentity();
  const bob = await generateIdentity();
  const a = createInboxClient({ baseUrl: server.url, identity: alice, clientVersion: "webclient-test/1" });
  const b = createInboxClient({ baseUrl: server.url, identity: bob });

  await t.test("not registered before sign-up", async () => {
    const e = await a.accounts.getAccount({}).catch((x) => x);
    assert.ok(isNotRegistered(e), String(e));
  });

  await t.test("sign-up through the printed invite link (http server in place of the placeholder)", async () => {
    const res = await a.acceptInvite(server.invite);
    assert.equal(res.signUp, SignUpResult.CREATED);
    const account = await a.accounts.getAccount({});
    assert.equal(account.userId, alice.userId);
  });

  const image = randomBytes(300_000);
  await t.test("a send with an attachment from an unregistered sender, listed and downloaded", async () => {
    await a.accounts.setContacts({ contactIds: [bob.userId] });
    const sent = await b.sendParcel({ type: "MEDIA", recipients: [{ userId: alice.userId, content: "key-material" }], attachment: image });
    assert.deepEqual(sent.deliveredRecipientIds, [alice.userId]);
    const { parcels } = await a.parcels.listParcels({});
    assert.equal(parcels.length, 1);
    assert.equal(parcels[0].senderId, bob.userId);
    assert.equal(parcels[0].content, "key-material");
    assert.equal(parcels[0].attachmentSize, image.length);
    let progress = 0;
    const got = await a.downloadAttachment(parcels[0].id, { onProgress: (n, total) => (progress = total === n ? n : progress) });
    assert.deepEqual(got, image);
    assert.equal(progress, image.length, "x-content-length announced the size");
  });

  await t.test("a send through a worker thread", async (tt) => {
    const { port1, port2 } = new MessageChannel();
    const worker = new Worker(new URL("./fixtures/inbox-worker.mjs", import.meta.url), { workerData: { port: port2 }, transferList: [port2] });
    tt.after(async () => {
      port1.close();
      await worker.terminate();
    });
    const sender = createWorkerSender(port1, { baseUrl: server.url, identity: bob });
    const res = await sender.sendParcel({ type: "MEDIA", recipients: [{ userId: alice.userId, content: "2" }], attachment: randomBytes(100_000) }, { transfer: true });
    assert.deepEqual(res.deliveredRecipientIds, [alice.userId]);
    assert.equal((await a.parcels.listParcels({})).parcels.length, 2);
  });

  await t.test("the pre-send check uses the server's published limit", async () => {
    const max = (await a.info()).limits.maxAttachmentBytes;
    const e = await b.sendParcel({ type: "MEDIA", recipients: [{ userId: alice.userId, content: "x" }], attachment: new Uint8Array(max + 1) }).catch((x) => x);
    assert.ok(e instanceof LimitError, String(e));
    assert.equal(e.max, max);
  });

  await t.test("PushSubscription.toJSON() through the shim", async () => {
    const p256 = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
    const p256dh = new Uint8Array(await crypto.subtle.exportKey("raw", p256.publicKey));
    const json = { endpoint: "https://push.example.com/wp/abc", expirationTime: null, keys: { p256dh: base64url(p256dh), auth: base64url(randomBytes(16)) } };
    await a.setPushSubscription({ toJSON: () => json });
    assert.equal((await a.accounts.getAccount({})).pushSubscribed, true);
    await a.accounts.deletePushSubscription({});
    assert.equal((await a.accounts.getAccount({})).pushSubscribed, false);
  });

  await t.test("a replayed signature, a skewed clock and another server's tag are told apart", async () => {
    const url = `${server.url}/v1/account`;
    const s = await signRequest(alice, { method: "GET", url, tag: await a.serverKey() });
    const headers = { "signature-input": s.signatureInput, signature: s.signature };
    assert.equal((await fetch(url, { headers })).status, 200);
    const again = await fetch(url, { headers });
    assert.equal(again.status, 401);
    const e = await errorFromResponse(again);
    assert.ok(isReplayed(e), e.message);

    const late = createInboxClient({ baseUrl: server.url, identity: alice, now: () => Date.now() - 3_600_000 });
    const skew = await late.accounts.getAccount({}).catch((x) => x);
    assert.ok(isClockSkew(skew), String(skew));

    // Signed for another server's key: refused whatever the Host says.
    const elsewhere = createInboxClient({ baseUrl: server.url, identity: alice, serverKey: bob.userId });
    const wrong = await elsewhere.accounts.getAccount({}).catch((x) => x);
    assert.ok(isWrongServer(wrong), String(wrong));
  });
});
