// PushSubscription.toJSON() goes to the JSON shim as is, signed with a
// Content-Digest of the body.
import assert from "node:assert/strict";
import { test } from "node:test";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  base64url,
  contentDigest,
  createInboxClient,
  GetInfoResponseSchema,
  generateIdentity,
  isNotRegistered,
  pushSubscriptionBody,
  InboxError,
} from "../dist/index.js";
import { grpcWebOk, recordingServer } from "./helpers.mjs";

const TAG = "PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw";

/** What a browser's PushSubscription looks like to the package. */
async function fakeSubscription() {
  const p256 = await crypto.subtle.generateKey({ name: "ECDH", namedCurve: "P-256" }, true, ["deriveBits"]);
  const p256dh = new Uint8Array(await crypto.subtle.exportKey("raw", p256.publicKey));
  const json = {
    endpoint: "https://push.example.com/send/abc",
    expirationTime: null,
    keys: { p256dh: base64url(p256dh), auth: base64url(crypto.getRandomValues(new Uint8Array(16))) },
  };
  return { json, sub: { endpoint: json.endpoint, toJSON: () => structuredClone(json) } };
}

test("pushSubscriptionBody keeps toJSON() as is and adds only contentEncoding", async () => {
  const { json, sub } = await fakeSubscription();
  assert.deepEqual(pushSubscriptionBody(sub), json);
  assert.deepEqual(pushSubscriptionBody(json, "aesgcm"), { ...json, contentEncoding: "aesgcm" });
  assert.throws(() => pushSubscriptionBody({ toJSON: () => ({ keys: json.keys }) }), /no endpoint/);
  assert.throws(() => pushSubscriptionBody({ toJSON: () => ({ endpoint: json.endpoint, keys: {} }) }), /no keys.p256dh/);
});

test("setPushSubscription PUTs the JSON signed with its digest; refusals become InboxError", async () => {
  const { json, sub } = await fakeSubscription();
  let refuse = false;
  const srv = await recordingServer((r, res) => {
    if (r.url.endsWith("/GetInfo")) return grpcWebOk(res, toBinary(GetInfoResponseSchema, create(GetInfoResponseSchema, { serverPublicKey: TAG })));
    if (refuse) {
      res.writeHead(403, { "content-type": "application/json" });
      return res.end(JSON.stringify({ code: 7, message: "this call is for registered users", details: [] }));
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end("{}");
  });
  try {
    const client = createInboxClient({ baseUrl: srv.url, identity: await generateIdentity() });
    await client.setPushSubscription(sub);
    const put = srv.requests[1];
    assert.equal(put.method, "PUT");
    assert.equal(put.url, "/v1/account/push-subscription");
    assert.equal(put.headers["content-type"], "application/json");
    assert.deepEqual(JSON.parse(new TextDecoder().decode(put.body)), json);
    assert.equal(put.headers["content-digest"], await contentDigest(put.body));
    assert.match(put.headers["signature-input"], /^piqchat=\("@method" "@authority" "@path" "content-digest"\);/);

    refuse = true;
    const err = await client.setPushSubscription(sub).catch((e) => e);
    assert.ok(err instanceof InboxError);
    assert.equal(err.codeName, "PERMISSION_DENIED");
    assert.equal(err.rawMessage, "this call is for registered users");
    assert.ok(isNotRegistered(err));
  } finally {
    await srv.close();
  }
});
