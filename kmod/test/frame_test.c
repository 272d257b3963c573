// SPDX-License-Identifier: GPL-2.0
/*
 * Run the frame checks of umhblob_frame.c, built unchanged in user space,
 * on the vectors of proto/testdata/vectors.txt. The Go tests in proto/
 * read the same file, so both implementations must judge every frame the
 * same way.
 *
 * Usage: frame_test VECTORS
 *
 * Each vector also checks that encoding the decoded header, and the hello
 * payload of a hello reply, gives back the input bytes. One more test pins
 * the hello payload layout.
 *
 * Prints one line per failed test, then "N passed, N failed". Exits 1
 * when a test fails, a line cannot be parsed or the file has no vectors.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../umhblob_proto.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static const struct {
	const char *name;
	int value;
} errnos[] = {
	{ "EBADMSG", EBADMSG },
	{ "EINVAL", EINVAL },
	{ "EMSGSIZE", EMSGSIZE },
	{ "EOPNOTSUPP", EOPNOTSUPP },
	{ "EPROTO", EPROTO },
	{ "EPROTONOSUPPORT", EPROTONOSUPPORT },
};

enum check {
	CHECK_HEADER,
	CHECK_REQUEST,
	CHECK_REPLY,
};

struct vector {
	const char *name;
	enum check check;
	u16 request_type;	/* for CHECK_REPLY */
	int expected;		/* 0 or a negative errno */
	u8 *frame;
	size_t len;
};

static const char *errno_name(int err)
{
	size_t i;

	if (!err)
		return "ok";
	for (i = 0; i < ARRAY_SIZE(errnos); i++)
		if (errnos[i].value == -err)
			return errnos[i].name;
	return "unknown errno";
}

static int parse_expected(const char *text, int *expected)
{
	size_t i;

	if (!strcmp(text, "ok")) {
		*expected = 0;
		return 0;
	}
	for (i = 0; i < ARRAY_SIZE(errnos); i++) {
		if (!strcmp(text, errnos[i].name)) {
			*expected = -errnos[i].value;
			return 0;
		}
	}
	return -EINVAL;
}

/* Parse "header", "request" or "reply:N", where N is a request type. */
static int parse_check(const char *text, struct vector *v)
{
	unsigned long type;
	char *end;

	if (!strcmp(text, "header")) {
		v->check = CHECK_HEADER;
		return 0;
	}
	if (!strcmp(text, "request")) {
		v->check = CHECK_REQUEST;
		return 0;
	}
	if (strncmp(text, "reply:", 6))
		return -EINVAL;

	type = strtoul(text + 6, &end, 0);
	if (end == text + 6 || *end || type > 0xffff)
		return -EINVAL;
	v->check = CHECK_REPLY;
	v->request_type = type;
	return 0;
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Decode @hex into a buffer of exactly the frame's size, so that the
 * address sanitizer catches a check that reads past the end. "-" is an
 * empty frame, and v->frame stays NULL for it.
 */
static int parse_frame(const char *hex, struct vector *v)
{
	size_t i, n = strlen(hex);

	v->frame = NULL;
	v->len = 0;
	if (!strcmp(hex, "-"))
		return 0;
	if (n % 2)
		return -EINVAL;

	v->frame = malloc(n / 2);
	if (!v->frame)
		return -ENOMEM;
	for (i = 0; i < n / 2; i++) {
		int hi = hex_digit(hex[2 * i]);
		int lo = hex_digit(hex[2 * i + 1]);

		if (hi < 0 || lo < 0) {
			free(v->frame);
			v->frame = NULL;
			return -EINVAL;
		}
		v->frame[i] = hi << 4 | lo;
	}
	v->len = n / 2;
	return 0;
}

/* Split "name check expected hex" into @v. Modifies @line. */
static int parse_vector(char *line, struct vector *v)
{
	const char *sep = " \t\n";
	char *fields[4], *save = NULL;
	int i;

	for (i = 0; i < 4; i++) {
		fields[i] = strtok_r(i ? NULL : line, sep, &save);
		if (!fields[i])
			return -EINVAL;
	}
	if (strtok_r(NULL, sep, &save))
		return -EINVAL;

	v->name = fields[0];
	if (parse_check(fields[1], v))
		return -EINVAL;
	if (parse_expected(fields[2], &v->expected))
		return -EINVAL;
	return parse_frame(fields[3], v);
}

/* Run the checks that the vector names, as the module runs them. */
static int run_check(const struct vector *v, struct umhb_header *hdr)
{
	int ret;

	ret = umhb_decode_header(v->frame, v->len, hdr);
	if (ret || v->check == CHECK_HEADER)
		return ret;
	if (v->check == CHECK_REQUEST)
		return umhb_check_request(hdr, v->len);
	return umhb_check_reply(hdr, v->request_type);
}

/* Return true if the vector passes, after printing why it does not. */
static bool test_vector(const struct vector *v)
{
	u8 encoded[UMHB_HEADER_SIZE];
	struct umhb_header hdr;
	bool pass = true;
	int ret;

	ret = run_check(v, &hdr);
	if (ret != v->expected) {
		printf("%s: check returned %d (%s), want %s\n", v->name, ret,
		       errno_name(ret), errno_name(v->expected));
		pass = false;
	}

	/* umhb_decode_header() fills in @hdr even when it returns an error. */
	if (v->len >= UMHB_HEADER_SIZE) {
		umhb_encode_header(&hdr, encoded);
		if (memcmp(encoded, v->frame, UMHB_HEADER_SIZE)) {
			printf("%s: re-encoded header differs from input\n",
			       v->name);
			pass = false;
		}
	}

	if (v->check == CHECK_REPLY && v->request_type == UMHB_TYPE_HELLO &&
	    v->len == UMHB_HEADER_SIZE + UMHB_HELLO_SIZE) {
		struct umhb_hello hello;
		const u8 *payload = v->frame + UMHB_HEADER_SIZE;

		umhb_decode_hello(payload, &hello);
		umhb_encode_hello(&hello, encoded);
		if (memcmp(encoded, payload, UMHB_HELLO_SIZE)) {
			printf("%s: re-encoded hello differs from input\n",
			       v->name);
			pass = false;
		}
	}
	return pass;
}

/*
 * Check the hello payload layout against fixed bytes, the same bytes that
 * the Go tests in proto/ expect.
 */
static bool test_hello_layout(void)
{
	static const u8 want[UMHB_HELLO_SIZE] = {
		0x00, 0x00, 0x40, 0x00, 0x2a, 0x00, 0x00, 0x00,
	};
	struct umhb_hello hello = { .max_payload = 4u << 20, .pid = 42 };
	u8 buf[UMHB_HELLO_SIZE];

	umhb_encode_hello(&hello, buf);
	if (memcmp(buf, want, sizeof(buf))) {
		printf("hello-layout: encoded hello differs from the layout\n");
		return false;
	}

	memset(&hello, 0, sizeof(hello));
	umhb_decode_hello(want, &hello);
	if (hello.max_payload != 4u << 20 || hello.pid != 42) {
		printf("hello-layout: decoded %u and %u, want %u and 42\n",
		       hello.max_payload, hello.pid, 4u << 20);
		return false;
	}
	return true;
}

int main(int argc, char **argv)
{
	unsigned int passed = 0, failed = 0, lineno = 0, vectors = 0;
	size_t size = 0;
	char *line = NULL;
	FILE *f;

	if (argc != 2) {
		fprintf(stderr, "usage: %s VECTORS\n", argv[0]);
		return 2;
	}
	f = fopen(argv[1], "r");
	if (!f) {
		fprintf(stderr, "%s: open %s: %s\n", argv[0], argv[1],
			strerror(errno));
		return 1;
	}

	while (getline(&line, &size, f) > 0) {
		struct vector v;

		lineno++;
		if (line[strspn(line, " \t\n")] == '\0' || line[0] == '#')
			continue;
		vectors++;
		if (parse_vector(line, &v)) {
			printf("%s:%u: invalid vector line\n", argv[1], lineno);
			failed++;
			continue;
		}
		if (test_vector(&v))
			passed++;
		else
			failed++;
		free(v.frame);
	}
	if (ferror(f)) {
		fprintf(stderr, "%s: read %s: %s\n", argv[0], argv[1],
			strerror(errno));
		failed++;
	}
	free(line);
	fclose(f);

	if (test_hello_layout())
		passed++;
	else
		failed++;

	printf("%u passed, %u failed\n", passed, failed);
	if (!vectors)
		fprintf(stderr, "%s: no vectors in %s\n", argv[0], argv[1]);
	return failed || !vectors;
}
