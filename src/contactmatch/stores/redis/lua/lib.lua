-- Key names for the single-Redis scripts (ARGV[1] is the prefix P). These scripts touch keys
-- of several hash tags, which one Redis allows; the cluster runs the c_*.lua steps instead.
local P = ARGV[1]
local G = '{' .. P .. ':g}'
local function ukey(uid) return '{' .. P .. ':u:' .. uid .. '}' end
local function tkey(hex) return '{' .. P .. ':t:' .. hex .. '}' end
local function okey(hex) return '{' .. P .. ':o:' .. hex .. '}' end
