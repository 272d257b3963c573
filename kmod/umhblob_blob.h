/* SPDX-License-Identifier: GPL-2.0 */
/* The helper's static ELF, embedded by umhblob_blob.S. */
#ifndef UMHBLOB_BLOB_H
#define UMHBLOB_BLOB_H

extern const char umhb_blob_start[];
extern const char umhb_blob_end[];

#endif /* UMHBLOB_BLOB_H */
