// @piqchat/inbox-client: the piqchat inbox server's API for web apps.

export { InboxClient, createInboxClient, type InboxClientOptions } from "./client.js";
export {
  Code,
  InboxError,
  LimitError,
  codeName,
  errorFromResponse,
  isClockSkew,
  isNotRegistered,
  isOverLimit,
  isRateLimited,
  isReplayed,
  isWrongServer,
  retryDelayMs,
  toInboxError,
} from "./errors.js";
export {
  HOST_PLACEHOLDER,
  parseInviteLink,
  resolveAcceptUrl,
  serverBase,
  serverOfAcceptUrl,
  type InviteLink,
} from "./invite.js";
export {
  exportJwk,
  exportSecretKey,
  generateIdentity,
  importJwk,
  importSecretKey,
  isUserId,
  publicKeyFromUserId,
  userIdFromPublicKey,
  type Ed25519PrivateJwk,
  type Identity,
  type KeyOptions,
} from "./keys.js";
export { checkBackup, checkContacts, checkExchangeCard, checkSendParcel, type SendParcelShape } from "./limits.js";
export { pushSubscriptionBody, type PushSubscriptionBody } from "./push.js";
export {
  LABEL,
  contentDigest,
  signRequest,
  signatureBase,
  signingFetch,
  type SignInput,
  type Signed,
  type SigningFetchOptions,
} from "./sign.js";
export { base64, base64url, fromBase64, fromBase64url } from "./base64.js";

// The generated messages and services, for apps that need more than the clients.
export * from "./gen/piqchat/inbox/v1/accounts_pb.js";
export * from "./gen/piqchat/inbox/v1/backups_pb.js";
export * from "./gen/piqchat/inbox/v1/common_pb.js";
export * from "./gen/piqchat/inbox/v1/exchanges_pb.js";
export * from "./gen/piqchat/inbox/v1/info_pb.js";
export * from "./gen/piqchat/inbox/v1/parcels_pb.js";
export { RetryInfoSchema, type RetryInfo } from "./gen/google/rpc/error_details_pb.js";
