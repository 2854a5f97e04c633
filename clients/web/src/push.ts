// Web Push: what a browser's PushSubscription.toJSON() gives is the body of
// the server's JSON shim `PUT /v1/account/push-subscription`, as is.

/** The shape of `PushSubscription.toJSON()` (lib.dom's PushSubscriptionJSON). */
export interface PushSubscriptionBody {
  endpoint: string;
  expirationTime?: number | null;
  keys: { p256dh: string; auth: string };
  /** `aes128gcm` (default) or `aesgcm` (legacy browsers); not part of toJSON(). */
  contentEncoding?: string;
}

/**
 * The shim's body for a `PushSubscription` (or its `toJSON()` result):
 * toJSON()'s members unchanged, plus `contentEncoding` when given.
 */
export function pushSubscriptionBody(
  sub: { toJSON(): unknown } | PushSubscriptionBody,
  contentEncoding?: string,
): PushSubscriptionBody {
  const json = (typeof (sub as { toJSON?: unknown }).toJSON === "function"
    ? (sub as { toJSON(): unknown }).toJSON()
    : sub) as Partial<PushSubscriptionBody> & Record<string, unknown>;
  if (typeof json?.endpoint !== "string" || !json.endpoint) throw new Error("the push subscription has no endpoint");
  if (typeof json.keys?.p256dh !== "string" || typeof json.keys?.auth !== "string") {
    throw new Error("the push subscription has no keys.p256dh and keys.auth (is it subscribed with userVisibleOnly?)");
  }
  const body = { ...json } as PushSubscriptionBody;
  if (contentEncoding !== undefined) body.contentEncoding = contentEncoding;
  return body;
}
