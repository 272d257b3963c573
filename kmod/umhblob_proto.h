/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The umhblob wire protocol, as the module implements it.
 *
 * Every message on the helper's pipes, and every request written to
 * /dev/umhblob, is one frame: a 24-byte header followed by "length" bytes
 * of payload. All header fields are little-endian. The Go definition is
 * proto/proto.go; proto/testdata/vectors.txt holds frames that both
 * decoders must judge the same way.
 *
 * This header and umhblob_frame.c build in the kernel and, unchanged, in
 * user space, so the same validation code runs under the sanitizers.
 */
#ifndef UMHBLOB_PROTO_H
#define UMHBLOB_PROTO_H

#ifdef __KERNEL__
#include <linux/errno.h>
#include <linux/types.h>
#else
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
#endif

#define UMHB_MAGIC		0x42484d55u	/* bytes "UMHB" on the wire */
#define UMHB_VERSION		1
#define UMHB_HEADER_SIZE	24
#define UMHB_MAX_PAYLOAD	(4u << 20)	/* 4 MiB, 64 pipe buffers */
#define UMHB_MAX_STATUS		4095		/* largest errno a reply carries */

/* Request types. A reply carries the request's type with UMHB_TYPE_REPLY. */
#define UMHB_TYPE_HELLO		1	/* handshake, sent only by the module */
#define UMHB_TYPE_PING		2	/* empty payload, empty reply */
#define UMHB_TYPE_ECHO		3	/* reply payload equals request payload */
#define UMHB_TYPE_REPLY		0x8000

#define UMHB_HELLO_SIZE		8

/* Payload of a HELLO request and of its reply: le32 max_payload, le32 pid. */
struct umhb_hello {
	u32 max_payload;	/* the sender's largest accepted payload */
	u32 pid;		/* the sender's pid, 0 from the module */
};

struct umhb_header {
	u32 magic;
	u16 version;
	u16 type;
	u64 id;
	u32 length;	/* payload bytes after the header */
	u32 status;	/* 0, or a positive errno in a reply */
};

int umhb_decode_header(const void *buf, size_t len, struct umhb_header *hdr);
void umhb_encode_header(const struct umhb_header *hdr, void *buf);
void umhb_encode_hello(const struct umhb_hello *hello, void *buf);
void umhb_decode_hello(const void *buf, struct umhb_hello *hello);
int umhb_check_request(const struct umhb_header *hdr, size_t frame_len);
int umhb_check_reply(const struct umhb_header *hdr, u16 request_type);

#endif /* UMHBLOB_PROTO_H */
