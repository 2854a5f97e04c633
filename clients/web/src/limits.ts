// Pre-send checks against the limits GetInfo publishes, so that an app
// learns what to fix before it uploads 20 MiB that the server would refuse
// (over plain HTTP/1.1 such a refusal may even surface as "Failed to fetch").

import { LimitError } from "./errors.js";
import type { Limits } from "./gen/piqchat/inbox/v1/info_pb.js";

const encoder = new TextEncoder();
const utf8Length = (s: string): number => encoder.encode(s).length;

/** What SendParcel takes, as far as the checks need it. */
export interface SendParcelShape {
  type?: string;
  recipients?: { userId?: string; content?: string }[];
  attachment?: Uint8Array;
}

/** Throws a LimitError when `req` breaks one of `limits`. */
export function checkSendParcel(limits: Limits | undefined, req: SendParcelShape): void {
  if (!limits) return;
  const recipients = req.recipients ?? [];
  if (recipients.length > limits.maxRecipients) {
    throw new LimitError("max_recipients", "the number of recipients", recipients.length, limits.maxRecipients);
  }
  for (const [i, r] of recipients.entries()) {
    const n = utf8Length(r.content ?? "");
    if (n > limits.maxContentBytes) {
      throw new LimitError("max_content_bytes", `the content for recipient ${i} in bytes`, n, limits.maxContentBytes);
    }
  }
  const size = req.attachment?.length ?? 0;
  if (size > limits.maxAttachmentBytes) {
    throw new LimitError("max_attachment_bytes", "the attachment in bytes", size, limits.maxAttachmentBytes);
  }
}

/** Throws a LimitError when an exchange offer or answer card is too large. */
export function checkExchangeCard(limits: Limits | undefined, card: string): void {
  const n = utf8Length(card);
  if (limits && n > limits.maxExchangeCardBytes) {
    throw new LimitError("max_exchange_card_bytes", "the exchange card in bytes", n, limits.maxExchangeCardBytes);
  }
}

/** Throws a LimitError when a backup is too large. */
export function checkBackup(limits: Limits | undefined, content: string): void {
  const n = utf8Length(content);
  if (limits && n > limits.maxBackupBytes) {
    throw new LimitError("max_backup_bytes", "the backup in bytes", n, limits.maxBackupBytes);
  }
}

/** Throws a LimitError when a contact whitelist has too many distinct ids. */
export function checkContacts(limits: Limits | undefined, contactIds: string[]): void {
  const n = new Set(contactIds).size;
  if (limits && n > limits.maxContacts) {
    throw new LimitError("max_contacts", "the number of contacts", n, limits.maxContacts);
  }
}
