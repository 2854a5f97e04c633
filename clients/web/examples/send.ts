// The README's "Writing a client" example (typechecked with the package):
// sign up through an invite link, send an image to a contact on any server,
// list the inbox and download what arrived.
import { createInboxClient, generateIdentity, toInboxError } from "../src/index.js";

export async function example(inviteLink: string, friend: { server: string; userId: string }, image: Uint8Array) {
  const identity = await generateIdentity(); // keep it (IndexedDB): the key is the account
  const mine = createInboxClient({ baseUrl: "https://inbox.example.org", identity, clientVersion: "my-app/1" });
  await mine.acceptInvite(inviteLink); // signs this key up on my server

  // Sending needs no account on the friend's server: sign for it, send there.
  const theirs = createInboxClient({ baseUrl: friend.server, identity });
  try {
    const sent = await theirs.sendParcel({
      type: "MEDIA",
      recipients: [{ userId: friend.userId, content: "the image key, encrypted for them" }],
      attachment: image, // already encrypted by the app
    });
    console.log("delivered to", sent.deliveredRecipientIds);
  } catch (e) {
    const err = toInboxError(e); // e.g. PERMISSION_DENIED: they have not added me
    console.log(err.codeName, err.rawMessage);
  }

  const { parcels } = await mine.parcels.listParcels({});
  for (const p of parcels) {
    if (p.attachmentSize !== undefined) {
      const bytes = await mine.downloadAttachment(p.id);
      console.log(`${p.type} from ${p.senderId}: ${bytes.length} bytes`);
    }
  }
}
