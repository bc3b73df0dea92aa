// simple-whip-server's configuration for avatar-engine: read by deploy/janus/run.sh, which hands it to the
// Debian package's server as its ./config.js. Ports and the Janus address come from the environment.
module.exports = {
	janus: {
		address: process.env.JANUS_WS || 'ws://127.0.0.1:8188'
	},
	port: parseInt(process.env.WHIP_PORT || '7080', 10),
	rest: '/whip',
	allowTrickle: true,
	strictETags: false,
	// Link headers with STUN/TURN servers for publishers, e.g. WHIP_ICE_SERVERS='[{"uri":"stun:stun.example.org"}]'
	iceServers: JSON.parse(process.env.WHIP_ICE_SERVERS || '[]')
};
