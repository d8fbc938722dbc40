package xts

//go:generate sh -c "cd _asm && go run . -pkg xts -out ../xts_amd64.s -stubs ../xts_amd64_stubs.go"
