// Key helpers: generate, export/import as raw secret and JWK, user ids.
import assert from "node:assert/strict";
import { test } from "node:test";
import {
  exportJwk,
  exportSecretKey,
  generateIdentity,
  importJwk,
  importSecretKey,
  isUserId,
  publicKeyFromUserId,
  signRequest,
  userIdFromPublicKey,
} from "../dist/index.js";
import { hex } from "./helpers.mjs";

const sign = async (id) =>
  (await signRequest(id, { method: "GET", url: "https://h/", tag: "t", created: 1, nonce: "a".repeat(22) })).signature;

test("a generated identity round-trips through the raw secret key and the JWK", async () => {
  const id = await generateIdentity({ extractable: true });
  assert.ok(isUserId(id.userId), id.userId);
  const secret = await exportSecretKey(id);
  assert.equal(secret.length, 32);
  const again = await importSecretKey(secret);
  assert.equal(again.userId, id.userId);
  assert.equal(again.privateKey.extractable, false, "imports are non-extractable by default");
  // Ed25519 is deterministic: the same key signs the same base identically.
  assert.equal(await sign(again), await sign(id));

  const jwk = await exportJwk(id);
  assert.deepEqual(Object.keys(jwk).sort(), ["crv", "d", "kty", "x"]);
  assert.equal(jwk.x, id.userId, "the JWK's x is the user id");
  const fromJwk = await importJwk(JSON.parse(JSON.stringify(jwk)), { extractable: true });
  assert.equal(fromJwk.userId, id.userId);
  assert.deepEqual(await exportSecretKey(fromJwk), secret);
});

test("the RFC 8032 TEST 2 key gives its public key", async () => {
  const id = await importSecretKey(hex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb"));
  assert.deepEqual(publicKeyFromUserId(id.userId), hex("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c"));
  assert.equal(id.userId, "PUAXw-hDiVqStwqnTRt-vJyYLM8uxJaMwM1V8Sr0Zgw");
});

test("non-extractable keys refuse export with a hint; bad inputs are refused", async () => {
  const id = await generateIdentity();
  assert.equal(id.privateKey.extractable, false);
  await assert.rejects(exportSecretKey(id), /not extractable: make or import it with \{ extractable: true \}/);
  await assert.rejects(importSecretKey(new Uint8Array(31)), /32 bytes, not 31/);
  const other = await exportJwk(await generateIdentity({ extractable: true }));
  const mine = await exportJwk(await generateIdentity({ extractable: true }));
  await assert.rejects(importJwk({ ...mine, x: other.x }), /x is not the public key of its d|invalid|data/i);
  await assert.rejects(importJwk({ kty: "EC", crv: "P-256", x: "", d: "" }), /not an Ed25519 private JWK/);
});

test("user ids: canonical unpadded base64url of 32 bytes only", () => {
  const key = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");
  assert.equal(userIdFromPublicKey(key), "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
  assert.deepEqual(publicKeyFromUserId("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"), key);
  assert.throws(() => userIdFromPublicKey(new Uint8Array(33)), /32 bytes, not 33/);
  for (const bad of [
    "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURp", // unused low bits set
    "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=", // padded
    "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo", // standard alphabet
    "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHUR", // 42 characters
    "",
  ]) {
    assert.equal(isUserId(bad), false, bad);
    assert.throws(() => publicKeyFromUserId(bad), /not a user id/);
  }
});
