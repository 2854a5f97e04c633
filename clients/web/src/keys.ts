// Ed25519 identities with WebCrypto: the key is the account (docs/AUTH.md
// "Keys and user ids"). A user id is the 32-byte public key as unpadded
// base64url, always 43 characters.

import { base64url, fromBase64url } from "./base64.js";

/** The caller: an Ed25519 private key and the user id of its public key. */
export interface Identity {
  /** The public key as unpadded base64url (43 characters). */
  userId: string;
  /** The Ed25519 private key; non-extractable unless made or imported so. */
  privateKey: CryptoKey;
}

/** An Ed25519 private key as a JSON Web Key (RFC 8037: kty OKP, crv Ed25519). */
export interface Ed25519PrivateJwk {
  kty: "OKP";
  crv: "Ed25519";
  /** The public key, unpadded base64url: the same text as the user id. */
  x: string;
  /** The 32-byte secret key (seed), unpadded base64url. */
  d: string;
}

export interface KeyOptions {
  /**
   * Whether the private key may be exported later (exportSecretKey,
   * exportJwk). Default false: the key can still be stored as a CryptoKey
   * (e.g. in IndexedDB) but its bytes never reach JavaScript.
   */
  extractable?: boolean;
}

const ED25519 = { name: "Ed25519" } as const;

/** A new random identity. */
export async function generateIdentity(opts: KeyOptions = {}): Promise<Identity> {
  const pair = (await crypto.subtle.generateKey(ED25519, opts.extractable ?? false, [
    "sign",
    "verify",
  ])) as CryptoKeyPair;
  const raw = new Uint8Array(await crypto.subtle.exportKey("raw", pair.publicKey));
  return { userId: userIdFromPublicKey(raw), privateKey: pair.privateKey };
}

/** The identity of a 32-byte secret key (the RFC 8032 seed). */
export async function importSecretKey(secret: Uint8Array, opts: KeyOptions = {}): Promise<Identity> {
  if (secret.length !== 32) {
    throw new Error(`an Ed25519 secret key has 32 bytes, not ${secret.length}`);
  }
  // PKCS#8 of an Ed25519 seed (RFC 8410) is a fixed 16-byte prefix and the
  // seed. WebCrypto cannot derive the public key directly; a JWK export of
  // the private key carries it as `x`.
  const pkcs8 = new Uint8Array([...PKCS8_PREFIX, ...secret]);
  const key = await crypto.subtle.importKey("pkcs8", pkcs8, ED25519, true, ["sign"]);
  const jwk = (await crypto.subtle.exportKey("jwk", key)) as JsonWebKey;
  if (opts.extractable) return { userId: userIdOfJwk(jwk), privateKey: key };
  return await importJwk(jwk as Ed25519PrivateJwk, opts);
}

const PKCS8_PREFIX = [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/** The 32-byte secret key of an extractable identity. */
export async function exportSecretKey(id: Identity): Promise<Uint8Array<ArrayBuffer>> {
  return fromBase64url((await exportJwk(id)).d);
}

/** The private JWK of an extractable identity. */
export async function exportJwk(id: Identity): Promise<Ed25519PrivateJwk> {
  if (!id.privateKey.extractable) {
    throw new Error("the private key is not extractable: make or import it with { extractable: true }");
  }
  const jwk = (await crypto.subtle.exportKey("jwk", id.privateKey)) as JsonWebKey;
  if (jwk.kty !== "OKP" || jwk.crv !== "Ed25519" || !jwk.d || !jwk.x) {
    throw new Error("not an Ed25519 private key");
  }
  return { kty: "OKP", crv: "Ed25519", x: jwk.x, d: jwk.d };
}

/** The identity of a private JWK; `x` must be the key's public key. */
export async function importJwk(jwk: Ed25519PrivateJwk, opts: KeyOptions = {}): Promise<Identity> {
  if (jwk.kty !== "OKP" || jwk.crv !== "Ed25519" || typeof jwk.d !== "string") {
    throw new Error("not an Ed25519 private JWK (kty OKP, crv Ed25519, d)");
  }
  const userId = userIdOfJwk(jwk);
  const privateKey = await crypto.subtle.importKey(
    "jwk",
    { kty: "OKP", crv: "Ed25519", x: jwk.x, d: jwk.d },
    ED25519,
    opts.extractable ?? false,
    ["sign"],
  );
  // WebCrypto does not check that x belongs to d everywhere: a mismatch
  // would only show later as "signature does not verify" at the server.
  const probe = new Uint8Array(32);
  const sig = await crypto.subtle.sign(ED25519, privateKey, probe);
  const pub = await crypto.subtle.importKey("raw", publicKeyFromUserId(userId), ED25519, false, ["verify"]);
  if (!(await crypto.subtle.verify(ED25519, pub, sig, probe))) {
    throw new Error("the JWK's x is not the public key of its d");
  }
  return { userId, privateKey };
}

function userIdOfJwk(jwk: JsonWebKey | Ed25519PrivateJwk): string {
  if (typeof jwk.x !== "string") throw new Error("the JWK has no public key (x)");
  return userIdFromPublicKey(publicKeyFromUserId(jwk.x));
}

/** The user id (text form) of a 32-byte Ed25519 public key. */
export function userIdFromPublicKey(publicKey: Uint8Array): string {
  if (publicKey.length !== 32) {
    throw new Error(`an Ed25519 public key has 32 bytes, not ${publicKey.length}`);
  }
  return base64url(publicKey);
}

/**
 * The 32-byte public key of a user id. Accepts only what the server
 * accepts: 43 characters of unpadded base64url in canonical form.
 */
export function publicKeyFromUserId(userId: string): Uint8Array<ArrayBuffer> {
  if (!isUserId(userId)) {
    throw new Error(
      `not a user id (43 characters of unpadded base64url, canonical): ${JSON.stringify(userId.slice(0, 64))}`,
    );
  }
  return fromBase64url(userId);
}

/** Whether `text` is a user id in the canonical form the server accepts. */
export function isUserId(text: string): boolean {
  // 43 characters carry 258 bits for 256: the last character's 2 low bits
  // are unused and must be zero (multiples of 4: A, E, I, ..., w, 0, 4, 8).
  return /^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/.test(text);
}
