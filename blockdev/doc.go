// Package blockdev is diskcryptd's access to block devices: opening a device
// or image file with its size and sector sizes (Device), recognising what a
// device already carries before it is overwritten (Probe), creating and
// removing dm-crypt mappings through the device-mapper ioctls exactly as
// cryptsetup would load them for a LUKS2 volume (CryptTarget, DMCreate,
// DMRemove, DMTable, DMList), and finding devices where udev may be absent
// (Finder, WaitPath).
//
// Everything here is Linux-specific. Key material handed to the mapping code
// is copied into the ioctl buffer only and that buffer is wiped after the
// call; no key ever appears in an error, a log line or a String result.
package blockdev
