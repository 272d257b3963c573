// SPDX-License-Identifier: GPL-2.0
/*
 * libFuzzer target for the frame checks of umhblob_frame.c, built
 * unchanged in user space with clang -fsanitize=fuzzer,address,undefined.
 *
 * The input is one frame, as user space writes it to the device or the
 * helper writes it to its stdout. Each run decodes it the way the module
 * does and checks invariants that no input may break. A broken invariant
 * prints a message and aborts, so libFuzzer reports it as a crash.
 *
 * The decoder and the checks are compared with a model written from the
 * rules in umhblob_proto.h, so a change in the order of the checks or in
 * an errno shows up here as well as in the shared vectors.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../umhblob_proto.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define fuzz_assert(cond, ...)						\
	do {								\
		if (!(cond)) {						\
			fprintf(stderr, "frame_fuzz: %s:%d: %s: ",	\
				__FILE__, __LINE__, #cond);		\
			fprintf(stderr, __VA_ARGS__);			\
			fputc('\n', stderr);				\
			abort();					\
		}							\
	} while (0)

/* The errno that umhb_decode_header() must return for these fields. */
static int model_decode(const struct umhb_header *hdr)
{
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

static int model_check_request(const struct umhb_header *hdr, size_t len)
{
	if (hdr->type != UMHB_TYPE_PING && hdr->type != UMHB_TYPE_ECHO)
		return -EOPNOTSUPP;
	if (hdr->status != 0)
		return -EINVAL;
	if (len != UMHB_HEADER_SIZE + (size_t)hdr->length)
		return -EINVAL;
	if (hdr->type == UMHB_TYPE_PING && hdr->length != 0)
		return -EINVAL;
	return 0;
}

static int model_check_reply(const struct umhb_header *hdr, u16 request_type)
{
	if (hdr->type != (u16)(request_type | UMHB_TYPE_REPLY))
		return -EPROTO;
	if (hdr->status != 0)
		return 0;
	if (request_type == UMHB_TYPE_HELLO && hdr->length != UMHB_HELLO_SIZE)
		return -EPROTO;
	if (request_type == UMHB_TYPE_PING && hdr->length != 0)
		return -EPROTO;
	return 0;
}

/*
 * Decode a copy of the first @len bytes of @data in a buffer of exactly
 * that size, so the address sanitizer reports any read past @len.
 */
static int decode_exact(const u8 *data, size_t len, struct umhb_header *hdr)
{
	u8 *copy = malloc(len ? len : 1);
	int ret;

	fuzz_assert(copy, "out of memory");
	memcpy(copy, data, len);
	ret = umhb_decode_header(copy, len, hdr);
	free(copy);
	return ret;
}

/* A buffer shorter than a header is -EINVAL and leaves @hdr alone. */
static void check_short(const u8 *data, size_t len)
{
	struct umhb_header hdr, untouched;
	int ret;

	memset(&hdr, 0xa5, sizeof(hdr));
	untouched = hdr;
	ret = decode_exact(data, len, &hdr);
	fuzz_assert(ret == -EINVAL, "decode of %zu bytes returned %d", len,
		    ret);
	fuzz_assert(!memcmp(&hdr, &untouched, sizeof(hdr)),
		    "decode of %zu bytes wrote the header", len);
}

static void check_header(const u8 *data, size_t len,
			 const struct umhb_header *hdr, int ret)
{
	u8 encoded[UMHB_HEADER_SIZE];
	int want = model_decode(hdr);

	fuzz_assert(ret == want, "decode returned %d, want %d", ret, want);

	/* The header is filled in even on error, so it always re-encodes. */
	umhb_encode_header(hdr, encoded);
	fuzz_assert(!memcmp(encoded, data, UMHB_HEADER_SIZE),
		    "re-encoded header differs from the input");

	/* A longer buffer decodes to the same header and result. */
	if (len > UMHB_HEADER_SIZE) {
		struct umhb_header prefix;
		int prefix_ret = decode_exact(data, UMHB_HEADER_SIZE, &prefix);

		fuzz_assert(prefix_ret == ret,
			    "decode of the header alone returned %d, want %d",
			    prefix_ret, ret);
		fuzz_assert(!memcmp(&prefix, hdr, sizeof(prefix)),
			    "decode of the header alone filled other fields");
	}
}

static void check_request(const struct umhb_header *hdr, size_t len)
{
	int ret = umhb_check_request(hdr, len);
	int want = model_check_request(hdr, len);

	fuzz_assert(ret == want,
		    "umhb_check_request(len %zu) returned %d, want %d",
		    len, ret, want);
	if (ret)
		return;
	fuzz_assert(len == UMHB_HEADER_SIZE + (size_t)hdr->length,
		    "accepted a %zu-byte frame for a %u-byte payload", len,
		    hdr->length);
	fuzz_assert(hdr->length <= UMHB_MAX_PAYLOAD,
		    "accepted a %u-byte payload", hdr->length);
}

static void check_reply(const struct umhb_header *hdr)
{
	const u16 types[] = {
		UMHB_TYPE_HELLO, UMHB_TYPE_PING, UMHB_TYPE_ECHO,
		hdr->type & (u16)~UMHB_TYPE_REPLY, hdr->type,
	};
	size_t i;

	for (i = 0; i < ARRAY_SIZE(types); i++) {
		int ret = umhb_check_reply(hdr, types[i]);
		int want = model_check_reply(hdr, types[i]);

		fuzz_assert(ret == want,
			    "umhb_check_reply(%#x, %#x) returned %d, want %d",
			    hdr->type, types[i], ret, want);
		fuzz_assert(ret || hdr->type == (types[i] | UMHB_TYPE_REPLY),
			    "accepted reply type %#x to request %#x",
			    hdr->type, types[i]);
	}
}

/* A hello payload decodes and re-encodes to the same 8 bytes. */
static void check_hello(const u8 *payload)
{
	struct umhb_hello hello;
	u8 encoded[UMHB_HELLO_SIZE];

	umhb_decode_hello(payload, &hello);
	umhb_encode_hello(&hello, encoded);
	fuzz_assert(!memcmp(encoded, payload, UMHB_HELLO_SIZE),
		    "re-encoded hello differs from the input");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	struct umhb_header hdr;
	int ret;

	if (len < UMHB_HEADER_SIZE) {
		check_short(data, len);
		return 0;
	}
	check_short(data, UMHB_HEADER_SIZE - 1);

	ret = decode_exact(data, len, &hdr);
	check_header(data, len, &hdr, ret);
	if (len >= UMHB_HEADER_SIZE + UMHB_HELLO_SIZE)
		check_hello(data + UMHB_HEADER_SIZE);
	if (ret)
		return 0;

	check_request(&hdr, len);
	check_reply(&hdr);
	return 0;
}
