// docs/AUTH.md's worked example, byte for byte, and the signing rules the
// server checks (@authority, @query, content-digest, covered headers).
import assert from "node:assert/strict";
import fs from "node:fs";
import { test } from "node:test";
import { fileURLToPath } from "node:url";
import { create, toBinary } from "@bufbuild/protobuf";
import {
  contentDigest,
  createInboxClient,
  fromBase64,
  GetInfoResponseSchema,
  importSecretKey,
  LimitsSchema,
  publicKeyFromUserId,
  signatureBase,
  signRequest,
  signingFetch,
} from "../dist/index.js";
import { grpcWebOk, hex, recordingServer } from "./helpers.mjs";

const AUTH_MD = fs.readFileSync(fileURLToPath(new URL("../../../docs/AUTH.md", import.meta.url)), "utf8");

const EXAMPLE = {
  secret: "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
  userId: "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
  tag: "PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw",
  base: [
    '"@method": GET',
    '"@authority": inbox.example.org',
    '"@path": /v1/parcels',
    '"@query": ?page_size=20',
    '"@signature-params": ("@method" "@authority" "@path" "@query");created=1767225600;nonce="oKGio6SlpqeoqaqrrK2urw";alg="ed25519";keyid="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";tag="PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw"',
  ].join("\n"),
  signatureInput:
    'piqchat=("@method" "@authority" "@path" "@query");created=1767225600;nonce="oKGio6SlpqeoqaqrrK2urw";alg="ed25519";keyid="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";tag="PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw"',
  signature:
    "piqchat=:iONON9Bn76A0adEJ9SSX02Tu07V2siuA+w8GXez9vr3o4uoFQB1K5rMzew+4pW3FanAjBC162hlf77ZKb07BCQ==:",
};

async function verify(userId, base, signatureHeader) {
  const key = await crypto.subtle.importKey("raw", publicKeyFromUserId(userId), { name: "Ed25519" }, false, ["verify"]);
  const m = /^piqchat=:([A-Za-z0-9+/=]+):$/.exec(signatureHeader);
  assert.ok(m, `Signature header ${signatureHeader}`);
  return await crypto.subtle.verify({ name: "Ed25519" }, key, fromBase64(m[1]), new TextEncoder().encode(base));
}

test("docs/AUTH.md worked example: user id, base and both headers byte for byte", async () => {
  const id = await importSecretKey(hex(EXAMPLE.secret));
  assert.equal(id.userId, EXAMPLE.userId);
  const s = await signRequest(id, {
    method: "GET",
    url: "https://inbox.example.org/v1/parcels?page_size=20",
    tag: EXAMPLE.tag,
    created: 1767225600,
    nonce: "oKGio6SlpqeoqaqrrK2urw",
  });
  assert.equal(s.base, EXAMPLE.base);
  assert.equal(s.signatureInput, EXAMPLE.signatureInput);
  assert.equal(s.signature, EXAMPLE.signature);
  assert.ok(await verify(id.userId, s.base, s.signature));
});

test("docs/AUTH.md still shows the example this package reproduces", () => {
  // The document is normative: if it changes, this package must follow.
  assert.ok(AUTH_MD.includes("```text\n" + EXAMPLE.base + "\n```"), "base block");
  assert.ok(AUTH_MD.includes(`Signature-Input: ${EXAMPLE.signatureInput}\n`), "Signature-Input line");
  assert.ok(AUTH_MD.includes(`Signature: ${EXAMPLE.signature}\n`), "Signature line");
  assert.ok(AUTH_MD.includes(`hex:       ${EXAMPLE.secret}`), "secret key");
  assert.ok(AUTH_MD.includes(`\`${EXAMPLE.tag}\``), "tag");
});

test("docs/AUTH.md Content-Digest example", async () => {
  assert.equal(
    await contentDigest(new TextEncoder().encode('{"hello": "world"}')),
    "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
  );
  assert.ok(AUTH_MD.includes("Content-Digest: sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"));
});

test("@authority is lowercase without the scheme's default port; @query when the URL has a ?", () => {
  const base = (url) => signatureBase(EXAMPLE.userId, { method: "post", url, tag: EXAMPLE.tag, created: 1, nonce: "n".repeat(22) }).base;
  assert.match(base("https://Inbox.Example.ORG:443/a"), /^"@method": POST\n"@authority": inbox\.example\.org\n"@path": \/a\n"@signature-params": \("@method" "@authority" "@path"\);/);
  assert.match(base("http://inbox.example.org:80/a"), /"@authority": inbox\.example\.org\n/);
  assert.match(base("http://localhost:8080/a"), /"@authority": localhost:8080\n/);
  assert.match(base("https://[::1]:8443/a"), /"@authority": \[::1\]:8443\n/);
  assert.match(base("http://[::1]:443/a"), /"@authority": \[::1\]:443\n/);
  assert.match(base("https://h"), /"@path": \/\n/);
  assert.match(base("https://h/x?"), /"@query": \?\n/);
  assert.match(base("https://h/x?a=1&b=%20"), /"@query": \?a=1&b=%20\n/);
  assert.match(base("https://h/%7Euser/x"), /"@path": \/%7Euser\/x\n/);
  assert.doesNotMatch(base("https://h/x#frag?"), /@query/);
});

test("covered headers: trimmed values, missing ones refused, non-ASCII refused", async () => {
  const h = new Headers({ "x-client-version": "  app/1 \t" });
  const { base } = signatureBase(EXAMPLE.userId, {
    method: "GET", url: "https://h/", tag: EXAMPLE.tag, headers: h, coverHeaders: ["X-Client-Version"], created: 5, nonce: "a".repeat(22),
  });
  assert.ok(base.includes('\n"x-client-version": app/1\n'), base);
  assert.ok(base.includes('("@method" "@authority" "@path" "x-client-version");created=5;'), base);
  assert.throws(
    () => signatureBase(EXAMPLE.userId, { method: "GET", url: "https://h/", tag: EXAMPLE.tag, coverHeaders: ["content-digest"] }),
    /covered header content-digest is not set/,
  );
  assert.throws(
    () => signatureBase(EXAMPLE.userId, { method: "GET", url: "https://h/", tag: EXAMPLE.tag, headers: new Headers({ "x-a": "ü" }), coverHeaders: ["x-a"] }),
    /not printable ASCII/,
  );
});

test("random nonces are 22 base64url characters and differ", () => {
  const nonce = (b) => /nonce="([^"]*)"/.exec(b)[1];
  const a = nonce(signatureBase(EXAMPLE.userId, { method: "GET", url: "https://h/", tag: EXAMPLE.tag }).base);
  const b = nonce(signatureBase(EXAMPLE.userId, { method: "GET", url: "https://h/", tag: EXAMPLE.tag }).base);
  assert.match(a, /^[A-Za-z0-9_-]{22}$/);
  assert.notEqual(a, b);
});

test("signingFetch signs what is sent: digest of the exact body, headers a verifier accepts", async () => {
  const id = await importSecretKey(hex(EXAMPLE.secret));
  const srv = await recordingServer((r, res) => res.end("ok"));
  try {
    const f = signingFetch({
      identity: id,
      serverKey: async () => EXAMPLE.tag,
      coverHeaders: ["x-client-version"],
      now: () => 1767225600_000,
    });
    const body = new Uint8Array([0, 0, 0, 0, 3, 10, 1, 65]);
    const res = await f(`${srv.url}/piqchat.inbox.v1.ParcelService/SendParcel`, {
      method: "POST",
      headers: { "x-client-version": "t/1", "content-type": "application/grpc-web+proto" },
      body,
    });
    assert.equal(res.status, 200);
    const got = srv.requests[0];
    assert.deepEqual(got.body, body);
    assert.equal(got.headers["content-digest"], await contentDigest(body));
    const input = got.headers["signature-input"];
    assert.match(
      input,
      /^piqchat=\("@method" "@authority" "@path" "content-digest" "x-client-version"\);created=1767225600;nonce="[A-Za-z0-9_-]{22}";alg="ed25519";keyid="11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";tag="PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw"$/,
    );
    // Rebuild the base from what the server received, as the server does.
    const base = [
      '"@method": POST',
      `"@authority": ${got.headers.host}`,
      `"@path": ${got.url}`,
      `"content-digest": ${got.headers["content-digest"]}`,
      `"x-client-version": ${got.headers["x-client-version"]}`,
      `"@signature-params": ${input.slice("piqchat=".length)}`,
    ].join("\n");
    assert.ok(await verify(id.userId, base, got.headers.signature), "signature verifies over the received request");

    // Without a body (GET) nothing about a digest is sent.
    await f(`${srv.url}/v1/account?x=1`);
    const get = srv.requests[1];
    assert.equal(get.headers["content-digest"], undefined);
    assert.match(get.headers["signature-input"], /^piqchat=\("@method" "@authority" "@path" "@query"\);/);
  } finally {
    await srv.close();
  }
});

test("the client fetches the server key from GetInfo once and signs with it", async () => {
  const id = await importSecretKey(hex(EXAMPLE.secret));
  const info = create(GetInfoResponseSchema, {
    serverPublicKey: EXAMPLE.tag,
    limits: create(LimitsSchema, { maxAttachmentBytes: 100 }),
  });
  const srv = await recordingServer((r, res) => {
    if (r.url.endsWith("/GetInfo")) return grpcWebOk(res, toBinary(GetInfoResponseSchema, info));
    grpcWebOk(res, new Uint8Array()); // an empty message answers any call
  });
  try {
    const client = createInboxClient({ baseUrl: srv.url, identity: id, clientVersion: "t/2" });
    await client.accounts.getAccount({});
    await client.parcels.listParcels({});
    const [getInfo, ...signed] = srv.requests;
    assert.equal(getInfo.url, "/piqchat.inbox.v1.InfoService/GetInfo");
    assert.equal(getInfo.headers["signature"], undefined, "GetInfo is unsigned");
    assert.equal(getInfo.headers["x-client-version"], "t/2");
    assert.deepEqual(signed.map((r) => r.url), [
      "/piqchat.inbox.v1.AccountService/GetAccount",
      "/piqchat.inbox.v1.ParcelService/ListParcels",
    ]);
    for (const r of signed) {
      assert.match(r.headers["signature-input"], new RegExp(`tag="${EXAMPLE.tag}"$`));
      assert.match(r.headers["signature-input"], /^piqchat=\("@method" "@authority" "@path" "content-digest" "x-client-version"\)/);
      assert.equal(r.headers["content-digest"], await contentDigest(r.body));
    }
  } finally {
    await srv.close();
  }
});

test("a pinned serverKey is signed as the tag without asking GetInfo", async () => {
  const id = await importSecretKey(hex(EXAMPLE.secret));
  const other = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660";
  const srv = await recordingServer((r, res) => grpcWebOk(res, new Uint8Array()));
  try {
    const client = createInboxClient({ baseUrl: srv.url, identity: id, serverKey: other });
    await client.accounts.getAccount({});
    assert.deepEqual(srv.requests.map((r) => r.url), ["/piqchat.inbox.v1.AccountService/GetAccount"]);
    assert.match(srv.requests[0].headers["signature-input"], new RegExp(`tag="${other}"$`));
  } finally {
    await srv.close();
  }
});
