/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The helper ELF, kept for the module's whole life because every restart
 * copies it again. Kbuild makes this object depend on the helper binary,
 * so a rebuilt helper always relinks the module.
 */
	.section .rodata, "a"
	.balign 16
	.global umhb_blob_start
umhb_blob_start:
	.incbin UMHBLOB_HELPER_PATH
	.global umhb_blob_end
umhb_blob_end:
