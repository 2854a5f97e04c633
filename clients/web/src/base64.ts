// Base64 in the two forms docs/AUTH.md uses: unpadded base64url (RFC 4648
// §5) for user ids, server keys and nonces, and standard base64 with
// padding for RFC 8941 byte sequences (the Signature header, Content-Digest).

/** Standard base64 with padding. */
export function base64(bytes: Uint8Array): string {
  let s = "";
  // Chunked: String.fromCharCode(...) of a large array overflows the stack.
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

/** Unpadded base64url. */
export function base64url(bytes: Uint8Array): string {
  return base64(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/**
 * Decodes unpadded base64url; throws on any other character, on padding and
 * on a length no encoding produces.
 */
export function fromBase64url(text: string): Uint8Array<ArrayBuffer> {
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) {
    throw new Error(`not unpadded base64url: ${JSON.stringify(text.slice(0, 64))}`);
  }
  const bin = atob(text.replace(/-/g, "+").replace(/_/g, "/"));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

/** Decodes standard base64 (padding optional). */
export function fromBase64(text: string): Uint8Array<ArrayBuffer> {
  const bin = atob(text);
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}
