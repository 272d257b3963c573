/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Interfaces between the helper's life cycle (umhblob_helper.c) and the
 * character device (umhblob_main.c).
 */
#ifndef UMHBLOB_H
#define UMHBLOB_H

#include <linux/completion.h>
#include <linux/kref.h>
#include <linux/list.h>
#include <linux/types.h>

#include "umhblob_proto.h"

#define UMHB_DRIVER_NAME	"umhblob_helper"	/* the helper's argv[0] */

/*
 * One request to the helper. The caller, the in-flight list and the send
 * queue each hold a reference, so a caller that gives up (timeout,
 * signal) never frees a frame the writer or reader still uses.
 */
struct umhb_request {
	struct kref ref;
	struct list_head inflight_node;	/* on umhb_proc.inflight */
	struct list_head sendq_node;	/* on umhb_proc.sendq */
	struct completion done;
	u64 id;			/* id on the pipe, assigned at submit */
	u16 type;
	bool completed;		/* under umhb_proc.lock */
	bool abandoned;		/* caller left; drop the reply */
	int error;
	void *frame;		/* request frame: header and payload */
	size_t frame_len;
	void *reply;		/* reply frame, owned by the caller */
	size_t reply_len;
};

struct umhb_stats {
	u64 helper_starts;
	u64 requests;
	u64 errors;
	pid_t helper_pid;	/* 0 while no helper is ready */
};

extern unsigned int umhb_request_timeout_ms;
extern unsigned int umhb_start_timeout_ms;

struct umhb_request *umhb_request_alloc(size_t frame_len);
void umhb_request_put(struct umhb_request *req);
int umhb_call(struct umhb_request *req);
void umhb_get_stats(struct umhb_stats *stats);

int umhb_helper_init(void);
void umhb_helper_exit(void);

#endif /* UMHBLOB_H */
