#!/bin/sh
# dracut initqueue/settled hook: unlock the volumes of /etc/diskcryptd/initramfs.conf
# once (TPM first, then a console prompt), before dracut looks for the root device.
if [ -r /etc/diskcryptd/initramfs.conf ] && [ ! -e /tmp/diskcryptd.done ]; then
	: >/tmp/diskcryptd.done
	/sbin/diskcryptd-initramfs-unlock /etc/diskcryptd/initramfs.conf
fi
