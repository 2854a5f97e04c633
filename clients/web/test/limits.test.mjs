// The pre-send check: a send that breaks GetInfo's limits is refused with a
// LimitError before anything is uploaded.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  checkBackup,
  checkContacts,
  checkExchangeCard,
  checkSendParcel,
  createInboxClient,
  GetInfoResponseSchema,
  generateIdentity,
  isOverLimit,
  LimitError,
  LimitsSchema,
  SendParcelResponseSchema,
} from "../dist/index.js";
import { grpcWebOk, recordingServer } from "./helpers.mjs";

const LIMITS = create(LimitsSchema, {
  maxAttachmentBytes: 1000,
  maxContentBytes: 10,
  maxRecipients: 2,
  maxExchangeCardBytes: 5,
  maxBackupBytes: 6,
  maxContacts: 2,
});
const R = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";

function refused(fn, limit, actual, max) {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof LimitError, String(e));
    assert.deepEqual([e.limit, e.actual, e.max], [limit, actual, max]);
    assert.ok(e.message.includes(`at most ${max}`) && e.message.includes(`limits.${limit}`), e.message);
    assert.equal(e.codeName, "INVALID_ARGUMENT");
    assert.ok(isOverLimit(e));
    return;
  }
  assert.fail(`no LimitError for ${limit}`);
}

test("each limit is checked at its boundary", () => {
  checkSendParcel(LIMITS, { recipients: [{ userId: R, content: "x".repeat(10) }], attachment: new Uint8Array(1000) });
  refused(() => checkSendParcel(LIMITS, { attachment: new Uint8Array(1001) }), "max_attachment_bytes", 1001, 1000);
  refused(() => checkSendParcel(LIMITS, { recipients: [{}, {}, {}] }), "max_recipients", 3, 2);
  // Bytes, not characters: "é" is 2 bytes in UTF-8.
  refused(() => checkSendParcel(LIMITS, { recipients: [{ content: "é".repeat(6) }] }), "max_content_bytes", 12, 10);
  checkExchangeCard(LIMITS, "abcde");
  refused(() => checkExchangeCard(LIMITS, "abcdef"), "max_exchange_card_bytes", 6, 5);
  checkBackup(LIMITS, "abcdef");
  refused(() => checkBackup(LIMITS, "abcdefg"), "max_backup_bytes", 7, 6);
  checkContacts(LIMITS, [R, R, "b"]);
  refused(() => checkContacts(LIMITS, ["a", "b", "c"]), "max_contacts", 3, 2);
  checkSendParcel(undefined, { attachment: new Uint8Array(5000) }); // no limits known: the server decides
});

test("client.sendParcel refuses an oversized attachment without sending it", async () => {
  const srv = await recordingServer((r, res) => {
    if (r.url.endsWith("/GetInfo")) {
      const info = create(GetInfoResponseSchema, { serverPublicKey: "PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw", limits: LIMITS });
      return grpcWebOk(res, toBinary(GetInfoResponseSchema, info));
    }
    grpcWebOk(res, toBinary(SendParcelResponseSchema, create(SendParcelResponseSchema, { deliveredRecipientIds: [R] })));
  });
  try {
    const client = createInboxClient({ baseUrl: srv.url, identity: await generateIdentity() });
    const recipients = [{ userId: R, content: "k" }];
    await assert.rejects(client.sendParcel({ type: "MEDIA", recipients, attachment: new Uint8Array(1001) }), LimitError);
    assert.deepEqual(srv.requests.map((r) => r.url), ["/piqchat.inbox.v1.InfoService/GetInfo"]);
    const ok = await client.sendParcel({ type: "MEDIA", recipients, attachment: new Uint8Array(1000) });
    assert.deepEqual(ok.deliveredRecipientIds, [R]);
    assert.equal(srv.requests.length, 2, "GetInfo was cached");
  } finally {
    await srv.close();
  }
});
