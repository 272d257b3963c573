// SPDX-License-Identifier: GPL-2.0
/*
 * Frame encoding and validation. Builds in the kernel and, unchanged, in
 * user space for the sanitizer and fuzzer builds, so it uses no kernel
 * helper beyond the types and errno values from umhblob_proto.h.
 */
#include "umhblob_proto.h"

/* Byte-wise loads and stores: frames come at any alignment and byte order. */
static u16 load_le16(const u8 *p)
{
	return (u16)(p[0] | p[1] << 8);
}

static u32 load_le32(const u8 *p)
{
	return (u32)p[0] | (u32)p[1] << 8 | (u32)p[2] << 16 | (u32)p[3] << 24;
}

static u64 load_le64(const u8 *p)
{
	return (u64)load_le32(p) | (u64)load_le32(p + 4) << 32;
}

static void store_le16(u8 *p, u16 v)
{
	p[0] = v;
	p[1] = v >> 8;
}

static void store_le32(u8 *p, u32 v)
{
	store_le16(p, v);
	store_le16(p + 2, v >> 16);
}

static void store_le64(u8 *p, u64 v)
{
	store_le32(p, v);
	store_le32(p + 4, v >> 32);
}

/*
 * Decode and check the fields every frame must get right, from the helper and from user space:
 * -EINVAL for a short buffer or an out-of-range status, -EBADMSG for a
 * wrong magic, -EPROTONOSUPPORT for another version and -EMSGSIZE for a
 * payload over UMHB_MAX_PAYLOAD. @hdr is filled in even on error.
 */
int umhb_decode_header(const void *buf, size_t len, struct umhb_header *hdr)
{
	const u8 *p = buf;

	if (len < UMHB_HEADER_SIZE)
		return -EINVAL;

	hdr->magic = load_le32(p);
	hdr->version = load_le16(p + 4);
	hdr->type = load_le16(p + 6);
	hdr->id = load_le64(p + 8);
	hdr->length = load_le32(p + 16);
	hdr->status = load_le32(p + 20);

	if (hdr->magic != UMHB_MAGIC)
		return -EBADMSG;
	if (hdr->version != UMHB_VERSION)
		return -EPROTONOSUPPORT;
	if (hdr->length > UMHB_MAX_PAYLOAD)
		return -EMSGSIZE;
	if (hdr->status > UMHB_MAX_STATUS)
		return -EINVAL;
	return 0;
}

void umhb_encode_header(const struct umhb_header *hdr, void *buf)
{
	u8 *p = buf;

	store_le32(p, hdr->magic);
	store_le16(p + 4, hdr->version);
	store_le16(p + 6, hdr->type);
	store_le64(p + 8, hdr->id);
	store_le32(p + 16, hdr->length);
	store_le32(p + 20, hdr->status);
}

void umhb_encode_hello(const struct umhb_hello *hello, void *buf)
{
	store_le32(buf, hello->max_payload);
	store_le32((u8 *)buf + 4, hello->pid);
}

void umhb_decode_hello(const void *buf, struct umhb_hello *hello)
{
	hello->max_payload = load_le32(buf);
	hello->pid = load_le32((const u8 *)buf + 4);
}

/*
 * Check a decoded request that user space wrote to the device as one
 * frame of @frame_len bytes. HELLO belongs to the module, so user space
 * may send only PING and ECHO (-EOPNOTSUPP otherwise). A request carries
 * no status, and the write must hold exactly one whole frame (-EINVAL).
 */
int umhb_check_request(const struct umhb_header *hdr, size_t frame_len)
{
	if (hdr->type != UMHB_TYPE_PING && hdr->type != UMHB_TYPE_ECHO)
		return -EOPNOTSUPP;
	if (hdr->status != 0)
		return -EINVAL;
	if (frame_len != UMHB_HEADER_SIZE + (size_t)hdr->length)
		return -EINVAL;
	if (hdr->type == UMHB_TYPE_PING && hdr->length != 0)
		return -EINVAL;
	return 0;
}

/*
 * Check a decoded reply from the helper against its request.
 * Any mismatch is -EPROTO: the helper broke the protocol and is not
 * trusted any further.
 */
int umhb_check_reply(const struct umhb_header *hdr, u16 request_type)
{
	if (hdr->type != (request_type | UMHB_TYPE_REPLY))
		return -EPROTO;
	if (hdr->status != 0)
		return 0;
	if (request_type == UMHB_TYPE_HELLO && hdr->length != UMHB_HELLO_SIZE)
		return -EPROTO;
	if (request_type == UMHB_TYPE_PING && hdr->length != 0)
		return -EPROTO;
	return 0;
}
