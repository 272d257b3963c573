// SPDX-License-Identifier: GPL-2.0
/*
 * umhblob: a module that carries a Go program inside itself and runs it as
 * a user mode helper, with /dev/umhblob to send it requests.
 *
 * User space writes one whole request frame (see umhblob_proto.h) with a
 * single write(2). The write blocks until the helper's reply arrives and
 * returns the frame's length; read(2) then returns the reply frame, with
 * the id the caller chose. Each open file keeps at most one unread reply.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "umhblob.h"

/* One open file of the device. */
struct umhb_file {
	struct mutex lock;	/* protects the fields below, never held across a request */
	bool busy;		/* a write is waiting for its reply */
	void *reply;		/* unread reply frame */
	size_t reply_len;
	size_t reply_pos;
};

static int umhb_open(struct inode *inode, struct file *file)
{
	struct umhb_file *uf;

	uf = kzalloc(sizeof(*uf), GFP_KERNEL);
	if (!uf)
		return -ENOMEM;
	mutex_init(&uf->lock);
	file->private_data = uf;
	/* A stream: no file position, so lseek fails with -ESPIPE. */
	return stream_open(inode, file);
}

static int umhb_release(struct inode *inode, struct file *file)
{
	struct umhb_file *uf = file->private_data;

	kvfree(uf->reply);
	kfree(uf);
	return 0;
}

/* Copy the request frame from user space and check it. */
static struct umhb_request *umhb_request_from_user(const char __user *buf,
						   size_t count)
{
	u8 raw[UMHB_HEADER_SIZE];
	struct umhb_request *req;
	struct umhb_header hdr;
	int err;

	if (count < UMHB_HEADER_SIZE)
		return ERR_PTR(-EINVAL);
	if (copy_from_user(raw, buf, sizeof(raw)))
		return ERR_PTR(-EFAULT);

	err = umhb_decode_header(raw, sizeof(raw), &hdr);
	if (!err)
		err = umhb_check_request(&hdr, count);
	if (err)
		return ERR_PTR(err);

	req = umhb_request_alloc(count);
	if (!req)
		return ERR_PTR(-ENOMEM);
	req->type = hdr.type;
	memcpy(req->frame, raw, sizeof(raw));
	if (copy_from_user(req->frame + sizeof(raw), buf + sizeof(raw),
			   count - sizeof(raw))) {
		umhb_request_put(req);
		return ERR_PTR(-EFAULT);
	}
	return req;
}

/* Take the reply from @req and give it back the id the caller chose. */
static void umhb_store_reply(struct umhb_file *uf, struct umhb_request *req,
			     u64 caller_id)
{
	struct umhb_header hdr;

	umhb_decode_header(req->reply, UMHB_HEADER_SIZE, &hdr);
	hdr.id = caller_id;
	umhb_encode_header(&hdr, req->reply);

	uf->reply = req->reply;
	uf->reply_len = req->reply_len;
	uf->reply_pos = 0;
	req->reply = NULL;
}

static int umhb_claim_file(struct umhb_file *uf)
{
	int err = 0;

	if (mutex_lock_interruptible(&uf->lock))
		return -ERESTARTSYS;
	if (uf->busy || uf->reply)
		err = -EBUSY;
	else
		uf->busy = true;
	mutex_unlock(&uf->lock);
	return err;
}

static ssize_t umhb_write(struct file *file, const char __user *buf,
			  size_t count, loff_t *ppos)
{
	struct umhb_file *uf = file->private_data;
	struct umhb_request *req;
	struct umhb_header hdr;
	int err;

	req = umhb_request_from_user(buf, count);
	if (IS_ERR(req))
		return PTR_ERR(req);
	umhb_decode_header(req->frame, UMHB_HEADER_SIZE, &hdr);

	err = umhb_claim_file(uf);
	if (err)
		goto out;

	err = umhb_call(req);

	mutex_lock(&uf->lock);
	uf->busy = false;
	if (!err)
		umhb_store_reply(uf, req, hdr.id);
	mutex_unlock(&uf->lock);
out:
	umhb_request_put(req);
	return err ? err : count;
}

/* Return the unread part of the reply; -ENODATA when there is none. */
static ssize_t umhb_read(struct file *file, char __user *buf, size_t count,
			 loff_t *ppos)
{
	struct umhb_file *uf = file->private_data;
	size_t n;
	ssize_t ret;

	if (mutex_lock_interruptible(&uf->lock))
		return -ERESTARTSYS;
	if (!uf->reply) {
		ret = uf->busy ? -EBUSY : -ENODATA;
		goto out;
	}

	n = min(count, uf->reply_len - uf->reply_pos);
	if (copy_to_user(buf, uf->reply + uf->reply_pos, n)) {
		ret = -EFAULT;
		goto out;
	}
	uf->reply_pos += n;
	if (uf->reply_pos == uf->reply_len) {
		kvfree(uf->reply);
		uf->reply = NULL;
	}
	ret = n;
out:
	mutex_unlock(&uf->lock);
	return ret;
}

static const struct file_operations umhb_fops = {
	.owner = THIS_MODULE,
	.open = umhb_open,
	.release = umhb_release,
	.read = umhb_read,
	.write = umhb_write,
};

#define UMHB_STAT_ATTR(field, fmt)					\
static ssize_t field##_show(struct device *dev,				\
			    struct device_attribute *attr, char *buf)	\
{									\
	struct umhb_stats stats;					\
									\
	umhb_get_stats(&stats);						\
	return sysfs_emit(buf, fmt "\n", stats.field);			\
}									\
static DEVICE_ATTR_RO(field)

UMHB_STAT_ATTR(helper_pid, "%d");
UMHB_STAT_ATTR(helper_starts, "%llu");
UMHB_STAT_ATTR(requests, "%llu");
UMHB_STAT_ATTR(errors, "%llu");

static struct attribute *umhb_attrs[] = {
	&dev_attr_helper_pid.attr,
	&dev_attr_helper_starts.attr,
	&dev_attr_requests.attr,
	&dev_attr_errors.attr,
	NULL,
};
ATTRIBUTE_GROUPS(umhb);

static struct miscdevice umhb_miscdev = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = "umhblob",
	.fops = &umhb_fops,
	.groups = umhb_groups,
	.mode = 0600,
};

static int __init umhb_init(void)
{
	int err;

	err = umhb_helper_init();
	if (err) {
		pr_err("helper did not start (%d)\n", err);
		return err;
	}

	err = misc_register(&umhb_miscdev);
	if (err) {
		pr_err("registering /dev/umhblob failed (%d)\n", err);
		umhb_helper_exit();
	}
	return err;
}

static void __exit umhb_exit(void)
{
	misc_deregister(&umhb_miscdev);
	umhb_helper_exit();
}

module_init(umhb_init);
module_exit(umhb_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("The umhblob authors");
MODULE_DESCRIPTION("Runs an embedded Go program as a user mode helper");
