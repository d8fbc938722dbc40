#!/bin/bash
# dracut module diskcryptd: when /etc/diskcryptd/initramfs.conf exists, unlock the
# volumes it lists (the root volume) through their TPM2 tokens with
# "diskcryptd serve --once", falling back to a passphrase/recovery-key prompt.

check() {
	require_binaries diskcryptd || return 1
	[ -r /etc/diskcryptd/initramfs.conf ] || return 255
	return 0
}

depends() {
	echo dm
	return 0
}

installkernel() {
	instmods dm_crypt xts ecb aesni_intel tpm_tis tpm_crb
}

install() {
	inst_binary diskcryptd /sbin/diskcryptd
	inst_simple /etc/diskcryptd/initramfs.conf /etc/diskcryptd/initramfs.conf
	chmod 0600 "${initdir}/etc/diskcryptd/initramfs.conf"
	inst_multiple -o stty
	inst_simple /usr/lib/diskcryptd/diskcryptd-initramfs-unlock /sbin/diskcryptd-initramfs-unlock
	inst_hook initqueue/settled 50 "$moddir/diskcryptd-unlock.sh"
}
