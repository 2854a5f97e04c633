// Sends through a real worker thread: the key travels as a CryptoKey, the
// attachment as a transferred buffer, results and errors come back typed.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Worker } from "node:worker_threads";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import {
  contentDigest,
  GetInfoResponseSchema,
  generateIdentity,
  InboxError,
  LimitError,
  LimitsSchema,
  SendParcelRequestSchema,
  SendParcelResponseSchema,
} from "../dist/index.js";
import { createWorkerSender } from "../dist/worker.js";
import { grpcWebError, grpcWebOk, recordingServer } from "./helpers.mjs";

const R = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

test("sendParcel in a worker thread", async (t) => {
  let deny = false;
  const srv = await recordingServer((r, res) => {
    if (r.url.endsWith("/GetInfo")) {
      const info = create(GetInfoResponseSchema, {
        serverPublicKey: "PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw",
        limits: create(LimitsSchema, { maxAttachmentBytes: 1 << 20, maxContentBytes: 100, maxRecipients: 5 }),
      });
      return grpcWebOk(res, toBinary(GetInfoResponseSchema, info));
    }
    if (deny) return grpcWebError(res, 7, "none of the recipients accepts parcels from you");
    grpcWebOk(res, toBinary(SendParcelResponseSchema, create(SendParcelResponseSchema, { deliveredRecipientIds: [R] })));
  });
  const { port1, port2 } = new MessageChannel();
  const worker = new Worker(new URL("./fixtures/inbox-worker.mjs", import.meta.url), {
    workerData: { port: port2 },
    transferList: [port2],
  });
  t.after(async () => {
    port1.close();
    await worker.terminate();
    await srv.close();
  });
  const identity = await generateIdentity(); // non-extractable, cloned as a CryptoKey
  const sender = createWorkerSender(port1, { baseUrl: srv.url, identity, clientVersion: "w/1" });

  const attachment = new Uint8Array(300_000);
  for (let i = 0; i < attachment.length; i += 65536) crypto.getRandomValues(attachment.subarray(i, i + 65536));
  const copy = attachment.slice();
  const res = await sender.sendParcel(
    { type: "MEDIA", recipients: [{ userId: R, content: "key" }], attachment },
    { transfer: true },
  );
  assert.deepEqual(res.deliveredRecipientIds, [R]);
  assert.equal(attachment.byteLength, 0, "the buffer moved to the worker");
  const sent = srv.requests.find((r) => r.url.endsWith("/SendParcel"));
  const msg = fromBinary(SendParcelRequestSchema, sent.body.subarray(5));
  assert.deepEqual(msg.attachment, copy);
  assert.equal(sent.headers["x-client-version"], "w/1");
  assert.equal(sent.headers["content-digest"], await contentDigest(sent.body));
  assert.match(sent.headers["signature-input"], new RegExp(`keyid="${identity.userId}"`));

  const big = await sender.sendParcel({ type: "MEDIA", recipients: [], attachment: new Uint8Array((1 << 20) + 1) }).catch((e) => e);
  assert.ok(big instanceof LimitError, String(big));
  assert.equal(big.limit, "max_attachment_bytes");
  assert.equal(big.actual, (1 << 20) + 1);
  assert.match(big.rawMessage, /^the attachment in bytes is 1048577; this server accepts at most 1048576/);
  assert.equal(big.message, `INVALID_ARGUMENT: ${big.rawMessage}`);

  deny = true;
  const denied = await sender.sendParcel({ type: "MEDIA", recipients: [{ userId: R, content: "k" }] }).catch((e) => e);
  assert.ok(denied instanceof InboxError);
  assert.equal(denied.rawMessage, "none of the recipients accepts parcels from you");
  assert.equal(denied.codeName, "PERMISSION_DENIED");
});
