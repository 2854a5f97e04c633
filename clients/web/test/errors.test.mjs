// Errors as typed values: codes and messages from real gRPC-web answers on
// the wire (a loopback server), RetryInfo decoded from a real
// grpc-status-details-bin header, the JSON gateway's Retry-After.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { anyPack, DurationSchema } from "@bufbuild/protobuf/wkt";
import {
  Code,
  createInboxClient,
  errorFromResponse,
  GetInfoResponseSchema,
  generateIdentity,
  InboxError,
  isClockSkew,
  isNotRegistered,
  isOverLimit,
  isRateLimited,
  isReplayed,
  isWrongServer,
  retryDelayMs,
  RetryInfoSchema,
  toInboxError,
} from "../dist/index.js";
import { base64 } from "../dist/base64.js";
import { grpcWebError, grpcWebOk, recordingServer } from "./helpers.mjs";

const TAG = "PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw";

/**
 * google.rpc.Status { code, message, details: [Any] }, written field by
 * field from status.proto (1: int32, 2: string, 3: repeated Any), so the
 * test does not share the decoder's schema.
 */
function statusBytes(code, message, anys) {
  const w = new BinaryWriter();
  w.tag(1, WireType.Varint).int32(code);
  w.tag(2, WireType.LengthDelimited).string(message);
  for (const a of anys) {
    w.tag(3, WireType.LengthDelimited).fork();
    w.tag(1, WireType.LengthDelimited).string(a.typeUrl);
    w.tag(2, WireType.LengthDelimited).bytes(a.value);
    w.join();
  }
  return w.finish();
}

/** A server whose every signed call gets `answer(res)`. */
async function refusingServer(answer) {
  return await recordingServer((r, res) => {
    if (r.url.endsWith("/GetInfo")) {
      return grpcWebOk(res, toBinary(GetInfoResponseSchema, create(GetInfoResponseSchema, { serverPublicKey: TAG })));
    }
    answer(res);
  });
}

async function refusal(answer) {
  const srv = await refusingServer(answer);
  try {
    const client = createInboxClient({ baseUrl: srv.url, identity: await generateIdentity() });
    return await client.parcels.listParcels({}).then(
      () => assert.fail("the call succeeded"),
      (e) => e,
    );
  } finally {
    await srv.close();
  }
}

test("rate limited: RESOURCE_EXHAUSTED with a RetryInfo in grpc-status-details-bin", async () => {
  const retry = create(RetryInfoSchema, { retryDelay: create(DurationSchema, { seconds: 2n, nanos: 500_000_000 }) });
  const any = anyPack(RetryInfoSchema, retry);
  assert.equal(any.typeUrl, "type.googleapis.com/google.rpc.RetryInfo");
  const details = base64(statusBytes(8, "too many requests; retry later", [any])).replace(/=+$/, "");
  const e = await refusal((res) =>
    grpcWebError(res, 8, "too many requests; retry later", { "grpc-status-details-bin": details }),
  );
  const err = toInboxError(e);
  assert.ok(err instanceof InboxError);
  assert.equal(err.code, Code.ResourceExhausted);
  assert.equal(err.codeName, "RESOURCE_EXHAUSTED");
  assert.equal(err.rawMessage, "too many requests; retry later");
  assert.equal(err.message, "RESOURCE_EXHAUSTED: too many requests; retry later");
  assert.ok(isRateLimited(e));
  assert.equal(retryDelayMs(e), 2500);
  assert.equal(isOverLimit(e), false);
});

test("over limit: RESOURCE_EXHAUSTED without a retry hint, and OUT_OF_RANGE", async () => {
  const full = await refusal((res) => grpcWebError(res, 8, "the recipient has 1000 parcels waiting"));
  assert.ok(isOverLimit(full));
  assert.equal(isRateLimited(full), false);
  assert.equal(retryDelayMs(full), undefined);
  const range = await refusal((res) => grpcWebError(res, 11, "message is larger than 20 MiB"));
  assert.ok(isOverLimit(range));
});

test("not registered, replayed, clock skew, wrong server: the server's wording", async () => {
  const denied = await refusal((res) => grpcWebError(res, 7, "this call is for users registered on this server"));
  assert.ok(isNotRegistered(denied));
  assert.equal(isReplayed(denied), false);

  // The messages of src/api/auth.rs.
  const replayed = await refusal((res) => grpcWebError(res, 16, "nonce was already used (replayed request)"));
  assert.ok(isReplayed(replayed));
  assert.equal(isClockSkew(replayed), false);
  for (const m of [
    "signature is too old (created is outside the allowed window)",
    "signature is from the future (check the client's clock)",
  ]) {
    const e = await refusal((res) => grpcWebError(res, 16, m));
    assert.ok(isClockSkew(e), m);
    assert.equal(isReplayed(e), false);
  }
  const wrong = await refusal((res) =>
    grpcWebError(res, 16, "tag must be this server's public key (server_public_key of GetInfo): the signature was made for another server"),
  );
  assert.ok(isWrongServer(wrong));
  assert.equal(isNotRegistered(wrong), false);
});

test("the client drops its cached server key when the server says the tag is wrong", async () => {
  let infos = 0;
  const srv = await recordingServer((r, res) => {
    if (r.url.endsWith("/GetInfo")) {
      infos++;
      return grpcWebOk(res, toBinary(GetInfoResponseSchema, create(GetInfoResponseSchema, { serverPublicKey: TAG })));
    }
    grpcWebError(res, 16, "tag must be this server's public key (server_public_key of GetInfo): the signature was made for another server");
  });
  try {
    const client = createInboxClient({ baseUrl: srv.url, identity: await generateIdentity() });
    await assert.rejects(client.accounts.getAccount({}));
    await assert.rejects(client.accounts.getAccount({}));
    assert.equal(infos, 2, "GetInfo asked again after the refusal");
  } finally {
    await srv.close();
  }
});

test("JSON gateway errors: google.rpc.Status body, RetryInfo detail or Retry-After", async () => {
  const json = (status, body, headers = {}) =>
    new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
  const a = await errorFromResponse(
    json(429, {
      code: 8,
      message: "slow down",
      details: [{ "@type": "type.googleapis.com/google.rpc.RetryInfo", retryDelay: "1.250s" }],
    }),
  );
  assert.equal(a.code, Code.ResourceExhausted);
  assert.equal(a.retryDelayMs, 1250);
  assert.ok(isRateLimited(a));
  const b = await errorFromResponse(json(429, { code: 8, message: "slow down", details: [] }, { "retry-after": "7" }));
  assert.equal(b.retryDelayMs, 7000);
  const c = await errorFromResponse(new Response("<html>bad gateway</html>", { status: 502 }));
  assert.equal(c.code, Code.Unknown);
  assert.match(c.rawMessage, /bad gateway/);
  const d = await errorFromResponse(new Response("", { status: 401 }));
  assert.equal(d.code, Code.Unauthenticated);
});
